"""Mover agents that survive failures, on a 3-replica cluster with real
agentd processes and the posix mover (or the command mover) copying real
files: kill -9 of an agent mid-transfer, an agent hung within its grace
period, stuck and slow movers, cancel end to end, kill -9 of a shard leader
under running transfers with watchers and ``hsmctl restore --wait``, drain
and control modes. Every test ends with the checks that no action ran on
two agents at once (the agents' own logs) and that the replicas hold
identical states."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentd.movers.posix import object_path
from hsm.client import CoordinatorClient, default_requester, submit_item
from hsm.fid import Fid
from hsm.hsmflags import HS
from hsm.simfs import SimFS
from hsm.v1 import types_pb2 as T
from tests.cluster import ProcCluster, no_concurrent_runs, until

pytestmark = pytest.mark.slow  # real processes, seconds per test

KiB = 1024
MiB = 1024 * KiB
FS = "fs1"
TERMINAL = (T.SUCCEEDED, T.FAILED, T.CANCELED)


class Rig:
    """A cluster, a simfs tree, a posix archive and agentd processes."""

    def __init__(self, tmp: Path, agent_grace: float = 3.0, replicas: int = 3, shards: int = 4,
                 replication: int | None = None, raft_room: int = 0, **extra: Any) -> None:
        self.tmp = tmp
        self.cluster = ProcCluster(tmp, replicas=replicas, shards=shards, agent_grace=agent_grace, extra=extra,
                                   replication=replication, raft_room=raft_room)
        self.fs = SimFS.create(tmp / "fs", FS)
        self.archive = tmp / "archive"
        self.archive.mkdir()
        self.client: CoordinatorClient | None = None

    def start(self) -> CoordinatorClient:
        self.cluster.start_all()
        self.client = CoordinatorClient(self.cluster.addresses, timeout=20, initiator="test",
                                        tls=self.cluster.client_tls)
        return self.client

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        self.cluster.stop()

    def agent(self, agent_id: str, slots: str = "archive=2,restore=2,remove=1", bandwidth: str = "256K",
              mover: dict[str, Any] | None = None, **cfg: Any) -> None:
        """Start an agentd process (posix mover, throttled so that a
        transfer takes seconds) and wait until every replica knows it."""
        kinds = dict(part.split("=") for part in slots.split(","))
        conf = {
            "backend": {"type": "simfs", "root": str(self.fs.root)},
            "mover": mover or {"type": "posix", "archive_root": str(self.archive), "bandwidth_limit": bandwidth,
                               "chunk_size": "64K"},
            "slots": {k: int(v) for k, v in kinds.items()},
            "progress_interval": 0.2, "reconnect_min_delay": 0.1, "reconnect_max_delay": 0.5,
            **cfg,
        }
        path = self.tmp / f"{agent_id}.yaml"
        path.write_text(yaml.safe_dump(conf))
        self.cluster.start_agent(agent_id, "--config", str(path))
        until(lambda: all(self.connected(agent_id, s.id) for s in self.cluster.live()), 20,
              f"agent {agent_id} connected to every replica")

    def connected(self, agent_id: str, rid: str) -> bool:
        return any(a.agent_id == agent_id and a.replica for a in self.cluster.status(rid).agents)

    def file(self, name: str, size: int) -> tuple[Path, Fid, bytes]:
        data = os.urandom(size)
        path = self.fs.root / name
        path.write_bytes(data)
        return path, self.fs.fid_of(path), data

    def submit(self, kind: str, fids: list[Fid], initiator: str = "test", cookie: int = 0) -> list[int]:
        """Submit as *initiator*; with *cookie*, item k carries cookie + k."""
        items = [submit_item(FS, fid, kind, requester=default_requester(initiator, cookie=cookie + k) if cookie
                             else None) for k, fid in enumerate(fids)]
        with CoordinatorClient(self.cluster.addresses, timeout=20, initiator=initiator,
                               tls=self.cluster.client_tls) as c:
            results = c.submit(items)
        assert all(r.outcome in (1, 2) for r in results), results  # CREATED or JOINED
        return [r.action_id for r in results]

    def two_archives_copying_on_a1(self, **agent_cfg: Any) -> tuple[list[tuple[Path, Fid, bytes]], list[int]]:
        """Start the cluster and agent a1, archive two 1 MiB files (4 s each
        at 256 KiB/s) and return once both are copying on a1."""
        self.start()
        self.agent("a1", **agent_cfg)
        files = [self.file(f"f{i}", 1 * MiB) for i in range(2)]
        ids = self.submit("archive", [f for _, f, _ in files])
        until(lambda: self.running_on(ids, "a1"), 20, "both archives copying on a1")
        return files, ids

    def actions(self, ids: list[int]) -> list[T.Action]:
        assert self.client is not None
        return [self.client.get_action(i) for i in ids]

    def running_on(self, ids: list[int], agent_id: str, progress: bool = True) -> bool:
        return all(a.state == T.STARTED and a.agent == agent_id and (a.bytes_done > 0 or not progress)
                   for a in self.actions(ids))

    def hsmctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hsmctl.cli", "--coordinators", self.cluster.addresses,
                               *args], capture_output=True, text=True, env=self.cluster.env, timeout=timeout)

    def check_archived(self, files: list[tuple[Path, Fid, bytes]]) -> None:
        """Each object is complete (byte for byte) and the file is ARCHIVED."""
        for path, fid, data in files:
            obj = object_path(self.archive, fid)
            assert obj.read_bytes() == data, f"archive object of {path.name} incomplete"
            assert self.fs.hsm_state(path).flags & HS.ARCHIVED, path
            assert not list(obj.parent.glob(obj.name + "_tmp*")), "a temporary object is left"

    def check_no_double_runs(self) -> None:
        assert no_concurrent_runs(self.cluster.agent_runs()) == []
        self.cluster.check_converged()


@pytest.fixture
def rig(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Rig]:
    marker = request.node.get_closest_marker("rig")
    r = Rig(tmp_path, **(marker.kwargs if marker else {}))
    try:
        yield r
    finally:
        r.close()


def runs_of(rig: Rig, action_id: int) -> list[tuple[str, int, float, float]]:
    return sorted((a, att, s, e) for a, i, att, s, e in rig.cluster.agent_runs() if i == action_id)


# ---------------------------------------------------------------------------
# leases and grace


@pytest.mark.rig(agent_grace=3.0)
def test_agent_killed_mid_transfer_finishes_on_another_after_the_grace(rig: Rig) -> None:
    files, ids = rig.two_archives_copying_on_a1()
    rig.agent("a2")
    t_kill = rig.cluster.kill_agent("a1")
    assert rig.client is not None
    final = rig.client.wait(ids, deadline=60)
    for i in ids:
        a = final[i]
        assert a.state == T.SUCCEEDED and a.agent == "a2" and a.attempt == 2, a
        [(ag1, att1, _, end1), (ag2, att2, start2, _)] = runs_of(rig, i)
        assert (ag1, att1, ag2, att2) == ("a1", 1, "a2", 2)
        assert start2 - t_kill >= 3.0 * 0.9, "requeued only after the grace period"
    rig.check_archived(files)
    rig.check_no_double_runs()


@pytest.mark.rig(agent_grace=12.0)
def test_agent_back_within_its_grace_keeps_its_transfers(rig: Rig) -> None:
    files, ids = rig.two_archives_copying_on_a1()
    rig.agent("a2")
    pid = rig.cluster.agents["a1"].pid
    os.kill(pid, signal.SIGSTOP)  # hung: its TCP connections stay open, it sends nothing
    try:
        until(lambda: not any(rig.connected("a1", s.id) for s in rig.cluster.live()), 10,
              "every replica to end a1's lapsed session (lease: 3 heartbeats)")
        assert all(a.state == T.STARTED and a.agent == "a1" for a in rig.actions(ids)), "not requeued in grace"
    finally:
        os.kill(pid, signal.SIGCONT)
    assert rig.client is not None
    final = rig.client.wait(ids, deadline=60)
    for i in ids:
        assert final[i].state == T.SUCCEEDED and final[i].agent == "a1" and final[i].attempt == 1, final[i]
        assert [r[:2] for r in runs_of(rig, i)] == [("a1", 1)], "it ran once, on a1"
    rig.check_archived(files)
    rig.check_no_double_runs()


@pytest.mark.rig(agent_grace=10.0)
def test_an_agent_no_leader_answers_stops_its_transfers_within_its_lease(rig: Rig) -> None:
    """Every replica freezes (SIGSTOP: their connections stay open, nothing
    answers) while a1 copies two archives: no leader renews a1's lease, so
    a1 stops both copies before the grace period could give them to
    another agent, publishes nothing and leaves the files as they were.
    Once the replicas are back, its completions (given back: no attempt
    used) reach them, and the archives run again and succeed."""
    rig.start()
    rig.agent("a1", bandwidth="256K")
    files = [rig.file(f"f{i}", 4 * MiB) for i in range(2)]  # 16 s each
    ids = rig.submit("archive", [f for _, f, _ in files])
    until(lambda: rig.running_on(ids, "a1"), 20, "both archives copying on a1")
    pids = [p.pid for p in rig.cluster.procs.values()]
    t_freeze = time.time()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        lease = (10.0 - 1.5) / 2  # coordinator.agents.agent_lease(agent_grace, heartbeat 1, leader_fallback 1.5)

        def stopped() -> list[tuple[str, int, int, float, float]]:
            return [r for r in rig.cluster.agent_runs() if r[1] in ids and r[4] != float("inf")]

        until(lambda: len(stopped()) == 2, lease + 10, "a1 to stop both copies")
        ends = [r[4] for r in stopped()]
        assert all(end - t_freeze < 10.0 - 1.5 for end in ends), (
            f"a copy ran {max(ends) - t_freeze:.1f} s after the freeze: past its lease ({lease} s), within "
            "reach of the grace period (10 s)")
        log = (rig.cluster.logs / "a1.log").read_text()
        assert log.count("renewed this agent's lease") == 2, log[-3000:]
        for path, fid, _ in files:
            obj = object_path(rig.archive, fid)
            assert not obj.exists() and not list(obj.parent.glob(obj.name + "_tmp*")), "published after the lease"
            assert rig.fs.hsm_state(path).flags == 0, "the file's HSM state is as it was"
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert rig.client is not None
    final = rig.client.wait(ids, deadline=90)
    for i in ids:
        assert final[i].state == T.SUCCEEDED, final[i]
    rig.check_archived(files)
    rig.check_no_double_runs()


STUCK_OR_SLOW = ('sh -c \'if [ "$1" = stuck ]; then exec sleep 60; fi; '
                 'for i in 1 2 3 4 5 6 7 8 9 10; do echo progress $((i * 100)) 1000; sleep 0.4; done\' sh {data}')


@pytest.mark.rig(progress_timeout=1.5, max_attempts=2)
def test_stuck_mover_is_reclaimed_and_a_slow_one_is_not(rig: Rig) -> None:
    rig.start()
    stuck, _, _ = rig.file("stuck", 1000)
    slow, _, _ = rig.file("slow", 1000)
    rig.agent("m1", slots="archive=2,restore=0,remove=0",
              mover={"type": "command", "archive_cmd": STUCK_OR_SLOW, "kill_grace": 1})
    assert rig.client is not None
    ids = [r.action_id for r in rig.client.submit([
        submit_item(FS, rig.fs.fid_of(stuck), "archive", data="stuck"),
        submit_item(FS, rig.fs.fid_of(slow), "archive", data="slow"),
    ])]
    final = rig.client.wait(ids, deadline=60)
    s, w = final[ids[0]], final[ids[1]]
    assert s.state == T.FAILED and s.errno == errno.ETIMEDOUT and s.attempt == 2, s
    assert "no progress" in s.error
    assert w.state == T.SUCCEEDED and w.attempt == 1 and w.bytes_done == 1000, w
    out = subprocess.run(["pgrep", "-f", "exec sleep 60|^sleep 60"], capture_output=True, text=True)
    assert out.stdout.strip() == "", "a reclaimed mover is still running"
    rig.check_no_double_runs()


# ---------------------------------------------------------------------------
# cancel


def test_cancel_waiting_running_and_by_fid_through_posix_movers(rig: Rig) -> None:
    rig.start()
    rig.agent("a1", slots="archive=1,restore=0,remove=0")
    rig.agent("a2", slots="archive=1,restore=0,remove=0")
    files = [rig.file(f"f{i}", 2 * MiB) for i in range(4)]  # 8 s each
    ids = rig.submit("archive", [f for _, f, _ in files])
    until(lambda: sum(a.state == T.STARTED and a.bytes_done > 0 for a in rig.actions(ids)) == 2, 20,
          "two archives copying, one per agent: every slot busy")
    acts = rig.actions(ids)
    running = [a.action_id for a in acts if a.state == T.STARTED]
    waiting = [a.action_id for a in acts if a.state == T.WAITING]
    assert {a.agent for a in acts if a.state == T.STARTED} == {"a1", "a2"}
    assert rig.client is not None

    t0 = time.monotonic()
    rig.client.cancel([waiting[0]])
    assert rig.client.get_action(waiting[0]).state == T.CANCELED, "a waiting action ends at once"
    assert time.monotonic() - t0 < 1.0

    t0 = time.monotonic()
    rig.client.cancel(running)  # each goes to the agent holding it, though no slot is free anywhere
    final = rig.client.wait(running, deadline=10)
    took = time.monotonic() - t0
    for i in running:
        assert final[i].state == T.CANCELED and final[i].errno == errno.ECANCELED, final[i]
    assert took < 2.0, f"running copies stopped in {took:.2f} s"
    by_fid = {f: (p, d) for p, f, d in files}
    for a in (final[i] for i in running):
        fid = Fid(a.fid.seq, a.fid.oid, a.fid.ver)
        obj = object_path(rig.archive, fid)
        assert not obj.exists() and not list(obj.parent.glob(obj.name + "_tmp*")), "temporary object left"
        assert not rig.fs.hsm_state(by_fid[fid][0]).flags & HS.ARCHIVED

    # the last one starts on a freed slot; cancel it by FID with hsmctl
    last = waiting[1]
    until(lambda: rig.client.get_action(last).state == T.STARTED, 10, "the last archive to start")  # type: ignore[union-attr]
    a = rig.client.get_action(last)
    out = rig.hsmctl("cancel", "--fsname", FS, "--fid", str(Fid(a.fid.seq, a.fid.oid, a.fid.ver)))
    assert out.returncode == 0, out.stderr
    assert rig.client.wait([last], deadline=10)[last].state == T.CANCELED
    for agent in ("a1", "a2"):
        log = (rig.cluster.logs / f"{agent}.log").read_text()
        assert "ended with errno 125" in log, f"{agent}'s mover did not report ECANCELED"
    rig.check_no_double_runs()


def test_copy_finished_before_the_cancel_lands_is_recorded_succeeded(rig: Rig) -> None:
    """The agent finishes the copy while the shard's leader is frozen (its
    Done is stuck in that replica's socket); the cancel goes to the new
    leader, the agent answers it with the completion: SUCCEEDED."""
    rig.start()
    rig.agent("a1", slots="archive=1,restore=0,remove=0")
    path, fid, data = rig.file("f", 512 * KiB)  # 2 s
    [aid] = rig.submit("archive", [fid])
    until(lambda: rig.running_on([aid], "a1"), 20, "the archive copying")
    leader = rig.cluster.leader_of(aid % 1000)
    frozen = rig.cluster.procs[leader].pid
    os.kill(frozen, signal.SIGSTOP)
    try:
        log = rig.cluster.logs / "a1.log"
        until(lambda: f"action {aid}/1 ARCHIVE" in log.read_text() and " succeeded" in log.read_text(), 20,
              "the copy to finish on a1")
        assert rig.client is not None
        [res] = rig.client.cancel([aid])
        final = rig.client.wait([aid], deadline=30)[aid]
    finally:
        os.kill(frozen, signal.SIGCONT)
    assert final.state == T.SUCCEEDED and final.errno == 0, final
    rig.check_archived([(path, fid, data)])
    rig.check_no_double_runs()


def test_cancel_all_purges_a_restore_storm_and_answers_every_requester(rig: Rig) -> None:
    rig.start()
    rig.agent("a1", slots="archive=4,restore=2,remove=0", bandwidth="0")
    files = [rig.file(f"f{i}", 1 * MiB) for i in range(12)]
    assert rig.client is not None
    ids = rig.submit("archive", [f for _, f, _ in files])
    assert all(a.state == T.SUCCEEDED for a in rig.client.wait(ids, deadline=60).values())
    for path, _, _ in files:
        rig.fs.release(path)
    rig.cluster.kill_agent("a1", signal.SIGTERM)
    rig.cluster.agents["a1"].wait(30)
    rig.agent("a1", slots="archive=0,restore=2,remove=0", bandwidth="128K")  # now 8 s per restore
    rig.agent("a2", slots="archive=0,restore=2,remove=0", bandwidth="128K")
    fids = [f for _, f, _ in files]
    # three initiators ask for every file at once: one action per file
    per = [rig.submit("restore", fids, initiator=f"oss{k}", cookie=1000 * (k + 1)) for k in range(3)]
    assert per[0] == per[1] == per[2]
    ids = per[0]
    until(lambda: sum(a.state == T.STARTED and a.bytes_done > 0 for a in rig.actions(ids)) == 4, 20,
          "four restores copying")
    watched: dict[str, dict[int, T.Action]] = {}

    def watch(k: int) -> None:
        with CoordinatorClient(rig.cluster.addresses, timeout=20, initiator=f"oss{k}",
                               tls=rig.cluster.client_tls) as c:
            watched[f"oss{k}"] = c.wait(ids, deadline=30)

    threads = [threading.Thread(target=watch, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    # a restore that finished before the purge stays SUCCEEDED; all others end CANCELED
    done_before = {a.action_id for a in rig.actions(ids) if a.state == T.SUCCEEDED}
    t0 = time.monotonic()
    out = rig.hsmctl("cancel", "--all", "--reason", "storm stopped by admin")
    assert out.returncode == 0, out.stderr
    for t in threads:
        t.join(30)
    took = time.monotonic() - t0
    assert sorted(watched) == ["oss0", "oss1", "oss2"], "every requester gets the end"
    for final in watched.values():
        for i in ids:
            assert final[i].state == (T.SUCCEEDED if i in done_before else T.CANCELED), final[i]
            assert {r.initiator for r in final[i].requesters} == {"oss0", "oss1", "oss2"}
    assert len(done_before) < len(ids) - 4, "the purge came too late to test anything"
    assert took < 5.0, f"purge took {took:.1f} s"
    by_fid = {(f.seq, f.oid): p for p, f, _ in files}
    for a in rig.actions(ids):
        if a.action_id not in done_before:
            path = by_fid[(a.fid.seq, a.fid.oid)]
            assert rig.fs.hsm_state(path).flags & HS.RELEASED, "a canceled restore leaves the file released"
    until(lambda: all(a.running.restore == 0 for a in rig.cluster.status("r1").agents), 10, "agents idle")
    rig.check_no_double_runs()


# ---------------------------------------------------------------------------
# leader failover under running transfers


def test_leader_killed_while_transfers_run_they_finish_and_waiters_get_the_end(rig: Rig) -> None:
    rig.start()
    rig.agent("a1", slots="archive=4,restore=2,remove=0", bandwidth="512K")
    rig.agent("a2", slots="archive=4,restore=2,remove=0", bandwidth="512K")
    files = [rig.file(f"f{i}", 1 * MiB) for i in range(8)]  # 2 s each way
    assert rig.client is not None
    ids = rig.submit("archive", [f for _, f, _ in files])
    assert all(a.state == T.SUCCEEDED for a in rig.client.wait(ids, deadline=60).values())
    rig.check_archived(files)
    for path, _, _ in files:
        rig.fs.release(path)
    env = dict(rig.cluster.env, HSM_COORDINATORS=rig.cluster.addresses)
    waiter = subprocess.Popen([sys.executable, "-m", "hsmctl.cli", "restore", "--wait",
                               *[str(p) for p, _, _ in files]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        def restores() -> list[T.Action]:
            return list(rig.client.list_actions(kinds=["restore"], include_terminal=True))  # type: ignore[union-attr]

        acts = until(lambda: (r := restores()) and len(r) == 8 and
                     sum(a.state == T.STARTED and a.bytes_done > 0 for a in r) >= 2 and r, 20,
                     "restores copying")
        ids = [a.action_id for a in acts]
        watched: dict[int, T.Action] = {}
        watcher = threading.Thread(target=lambda: watched.update(
            CoordinatorClient(rig.cluster.addresses, timeout=20, tls=rig.cluster.client_tls).wait(ids, deadline=90)))
        watcher.start()
        started = next(a for a in acts if a.state == T.STARTED)
        victim = rig.cluster.leader_of(started.action_id % 1000)
        rig.cluster.kill(victim)
        out, err = waiter.communicate(timeout=90)
        watcher.join(90)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    assert waiter.returncode == 0, err
    assert sorted(watched) == sorted(ids) and all(a.state == T.SUCCEEDED for a in watched.values())
    for path, _, data in files:
        assert path.read_bytes() == data and not rig.fs.hsm_state(path).flags & HS.RELEASED
    assert len(restores()) == 8, "hsmctl resumed its watch; it submitted nothing again"
    rig.check_no_double_runs()


def test_restore_wait_deadline_gives_up_and_the_restore_goes_on(rig: Rig) -> None:
    rig.start()
    rig.agent("a1", slots="archive=1,restore=1,remove=0", bandwidth="1M")
    path, fid, data = rig.file("f", 3 * MiB)  # 3 s each way
    [aid] = rig.submit("archive", [fid])
    assert rig.client is not None
    assert rig.client.wait([aid], deadline=30)[aid].state == T.SUCCEEDED
    rig.fs.release(path)
    t0 = time.monotonic()
    out = rig.hsmctl("restore", "--wait", "--deadline", "1", str(path))
    took = time.monotonic() - t0
    assert out.returncode == 1 and "gave up waiting after 1 s" in out.stderr, out
    assert took < 4.0
    [r] = list(rig.client.list_actions(kinds=["restore"]))
    assert r.state in (T.WAITING, T.STARTED)
    assert rig.client.wait([r.action_id], deadline=30)[r.action_id].state == T.SUCCEEDED
    assert path.read_bytes() == data


# ---------------------------------------------------------------------------
# drain and control


def test_agent_drain_lets_running_work_finish_and_gives_no_new_work(rig: Rig) -> None:
    first, ids = rig.two_archives_copying_on_a1()
    rig.agent("a2", bandwidth="0")

    out = rig.hsmctl("agent", "drain", "a1")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "agent a1: draining, no new work; still running 2 action(s) (2 archive)\n"
    more = [rig.file(f"g{i}", 64 * KiB) for i in range(6)]
    more_ids = rig.submit("archive", [f for _, f, _ in more])
    assert rig.client is not None
    done = rig.client.wait(more_ids, deadline=30)
    assert {a.agent for a in done.values()} == {"a2"}, "a drained agent gets no new work"
    out = rig.hsmctl("agents")
    assert any(line.split()[:2] == ["a1", "draining"] for line in out.stdout.splitlines()), out.stdout

    out = rig.hsmctl("agent", "drain", "a1", "--wait")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "agent a1: drained, nothing running; it can be stopped safely\n"
    for a in rig.actions(ids):
        assert a.state == T.SUCCEEDED and a.agent == "a1" and a.attempt == 1, a
    rig.cluster.kill_agent("a1", signal.SIGTERM)
    assert rig.cluster.agents["a1"].wait(10) == 0

    # the drain outlives the agent's restart, until resumed
    rig.agent("a1", bandwidth="0")
    out = rig.hsmctl("agents", "--json")
    assert '"draining": true' in out.stdout
    rig.cluster.kill_agent("a2", signal.SIGTERM)
    rig.cluster.agents["a2"].wait(10)
    _, fid, _ = rig.file("h", 1000)
    [late] = rig.submit("archive", [fid])
    assert rig.client.get_action(late).state == T.WAITING
    out = rig.hsmctl("agent", "resume", "a1")
    assert out.returncode == 0 and out.stdout == "agent a1: active, given work again\n", out
    assert rig.client.wait([late], deadline=20)[late].agent == "a1"

    out = rig.hsmctl("agent", "drain", "nosuch")
    assert out.returncode == 1 and "no agent 'nosuch'" in out.stderr, out
    rig.check_archived(first + more)
    rig.check_no_double_runs()


@pytest.mark.rig(max_attempts=1)
def test_sigterm_hands_back_running_work_without_using_an_attempt(rig: Rig) -> None:
    files, ids = rig.two_archives_copying_on_a1(drain_timeout=0.5)
    rig.agent("a2", bandwidth="0")
    t0 = time.monotonic()
    rig.cluster.kill_agent("a1", signal.SIGTERM)
    assert rig.cluster.agents["a1"].wait(15) == 0
    assert time.monotonic() - t0 < 5.0, "drains within a bounded time"
    assert rig.client is not None
    final = rig.client.wait(ids, deadline=30)
    for a in final.values():
        # max_attempts is 1: a hand-back did not count as a failed attempt
        assert a.state == T.SUCCEEDED and a.agent == "a2" and a.attempt == 2, a
    rig.check_archived(files)
    rig.check_no_double_runs()


def test_control_disabled_queues_and_shutdown_lets_running_work_finish(rig: Rig) -> None:
    rig.start()
    rig.agent("a1", slots="archive=2,restore=0,remove=0")
    assert rig.hsmctl("control", "disabled").stdout == "disabled\n"
    files = [rig.file(f"f{i}", 512 * KiB) for i in range(2)]
    ids = rig.submit("archive", [f for _, f, _ in files])
    other = rig.file("x", 1000)
    rig.submit("archive", [other[1]])  # one more submit: the dispatcher looks again
    assert rig.client is not None
    assert all(a.state == T.WAITING for a in rig.actions(ids)), "disabled: queued, nothing dispatched"
    assert "started" not in (rig.cluster.logs / "a1.log").read_text()
    assert rig.hsmctl("control", "enabled").stdout == "enabled\n"
    until(lambda: rig.running_on(ids, "a1"), 20, "the archives copying once enabled")
    assert rig.hsmctl("control", "shutdown").stdout == "shutdown\n"
    late = rig.file("late", 1000)
    out = rig.hsmctl("archive", str(late[0]))
    assert out.returncode == 1 and "ESHUTDOWN" in out.stderr, out
    final = rig.client.wait(ids, deadline=30)
    assert all(a.state == T.SUCCEEDED for a in final.values()), "running actions finish in shutdown"
    assert rig.hsmctl("control").stdout == "shutdown\n"
    rig.hsmctl("control", "enabled")
    rig.check_archived(files)
    rig.check_no_double_runs()


def test_a_striped_archive_survives_kill_9_of_an_agent_mid_part(rig: Rig) -> None:
    """4 parts of 1 MiB over two agents (4 s each at 256 KiB/s); a1 is
    killed while it copies one: after its grace the part runs on a2, the
    other parts are not copied again, and the sealed object is the file."""
    client = rig.start()
    client.set_policy("striping: {above: 2M, part_size: 1M}\n")
    rig.agent("a1")
    rig.agent("a2")
    path, fid, data = rig.file("big", 4 * MiB)
    (aid,) = rig.submit("archive", [fid])

    def a1_copies_a_part() -> bool:
        return any(a == "a1" and i == aid and att >> 31 for a, i, att, _s, e in rig.cluster.agent_runs()
                   if e == float("inf"))

    until(a1_copies_a_part, 30, "a1 to copy a part")
    t_kill = rig.cluster.kill_agent("a1")
    final = client.wait([aid], deadline=90)[aid]
    assert final.state == T.SUCCEEDED, final
    runs = [r for r in rig.cluster.agent_runs() if r[1] == aid]
    parts = [(a, att, s) for a, _i, att, s, _e in runs if att >> 31]
    by_part: dict[int, list[tuple[str, int, float]]] = {}
    for a, att, s in parts:
        by_part.setdefault((att >> 16) & 0x7FFF, []).append((a, att & 0xFFFF, s))
    assert sorted(by_part) == [0, 1, 2, 3]
    again = [p for p, rs in by_part.items() if len(rs) > 1]
    assert len(again) == 1, by_part  # only the killed agent's part ran twice
    (first, second) = sorted(by_part[again[0]], key=lambda r: r[2])
    assert first[0] == "a1" and second[0] == "a2" and second[1] == 2
    assert second[2] - t_kill >= 3.0 * 0.9, "run again only after the grace period"
    rig.check_archived([(path, fid, data)])
    rig.check_no_double_runs()
