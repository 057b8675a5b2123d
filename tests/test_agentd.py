"""agentd against the real coordinator (in-process, real gRPC with mutual
TLS on a loopback port: each agent presents its own certificate, role agent,
CN its agent id), with the posix mover on a real simfs tree: registration,
pulling and running work, credits, cancels, stream loss, stopping, and the
CLI process."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvloop

from agentd.config import AgentConfig, BackendConfig, PosixMoverConfig, SlotsConfig
from agentd.daemon import Agent, backoff_delay, make_backend, make_mover
from agentd.movers.posix import object_path
from coordinator.config import ADMIN_CERT
from coordinator.roles import AGENT
from hsm.client import CoordinatorClient, submit_item
from hsm.fid import Fid
from hsm.hsmflags import HS
from hsm.simfs import SimFS
from hsm.v1 import types_pb2 as tpb
from tests.cluster import tls_replica, until_async
from tests.cluster import until as poll_until
from tests.conftest import RunningCoordinator, SessionCa

KiB = 1024


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    return poll_until(cond, timeout, what, interval=0.02)


@dataclass
class Tree:
    fs: SimFS
    archive: Path

    def add(self, name: str, size: int) -> tuple[Path, Fid, bytes]:
        data = os.urandom(size)
        path = self.fs.root / name
        path.write_bytes(data)
        return path, self.fs.fid_of(path), data


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    fs = SimFS.create(tmp_path / "fs", fsname="simfs")
    archive = tmp_path / "archive"
    archive.mkdir()
    return Tree(fs, archive)


@pytest.fixture
def client(coordinator: Any) -> Iterator[CoordinatorClient]:
    with coordinator.client(timeout=10) as c:
        yield c


def agent_config(coordinator: RunningCoordinator | str, tree: Tree, **kw: Any) -> AgentConfig:
    """An agent of *coordinator* presenting its own certificate (from the
    coordinator's CA: role agent, CN its agent id); or of an address, with
    the ``tls`` given (none: plain text)."""
    mover = kw.pop("mover", {})
    agent_id = kw.pop("agent_id", "a1")
    if isinstance(coordinator, RunningCoordinator):
        address = coordinator.address
        kw.setdefault("tls", coordinator.tls(AGENT, agent_id))
    else:
        address = coordinator
    return AgentConfig(
        agent_id=agent_id,
        coordinators=(address,),
        backend=BackendConfig(root=str(tree.fs.root)),
        mover=PosixMoverConfig(archive_root=str(tree.archive), **{"progress_interval": 0.1, **mover}),
        progress_interval=kw.pop("progress_interval", 0.2),
        reconnect_min_delay=kw.pop("reconnect_min_delay", 0.05),
        reconnect_max_delay=kw.pop("reconnect_max_delay", 0.5),
        **kw,
    )


class AgentThread:
    """An Agent on its own uvloop event loop in a thread, as the CLI runs it."""

    def __init__(self, config: AgentConfig) -> None:
        self.agent = Agent(config, make_backend(config), make_mover(config))
        self.rc: int | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="agentd", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                self.rc = runner.run(self.agent.run())
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def stop(self, *, now: bool = False, timeout: float = 15.0) -> int | None:
        self.agent.stop(now=now)
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "agent did not stop"
        if self.error is not None:
            raise self.error
        return self.rc


@contextmanager
def running_agent(config: AgentConfig) -> Iterator[Agent]:
    at = AgentThread(config)
    try:
        yield at.agent
    finally:
        if at.thread.is_alive():
            at.stop(now=True)


def registered(client: CoordinatorClient, agent_id: str) -> bool:
    return any(a.agent_id == agent_id and a.replica for a in client.status().agents)


def submit(client: CoordinatorClient, fid: Fid, kind: str, fsname: str = "simfs") -> int:
    (res,) = client.submit([submit_item(fsname, fid, kind, 1)])
    assert res.outcome == 1, res  # CREATED
    return res.action_id


def action(client: CoordinatorClient, action_id: int) -> tpb.Action:
    return client.get_action(action_id)


# --------------------------------------------------------------------------


def test_agent_archives_restores_and_removes(coordinator: Any, client: CoordinatorClient, tree: Tree) -> None:
    files = [tree.add(f"f{i}", size) for i, size in enumerate((0, 1, 100 * KiB, 1024 * KiB + 1))]
    with running_agent(agent_config(coordinator, tree)) as agent:
        wait_for(lambda: registered(client, "a1"), what="agent a1 to register")
        ids = [submit(client, fid, "archive") for _, fid, _ in files]
        final = client.wait(ids, deadline=20)
        for (path, fid, data), action_id in zip(files, ids, strict=True):
            a = final[action_id]
            assert a.state == tpb.SUCCEEDED, (a.state, a.errno, a.error)
            assert a.agent == "a1" and a.attempt == 1
            assert a.bytes_done == len(data)
            assert object_path(tree.archive, fid).read_bytes() == data
            assert tree.fs.hsm_state(path).flags & HS.ARCHIVED

        # release one file, restore it through the coordinator, then remove its copy
        path, fid, data = files[2]
        tree.fs.release(path)
        assert tree.fs.hsm_state(path).flags & HS.RELEASED
        rid = submit(client, fid, "restore")
        assert client.wait([rid], deadline=20)[rid].state == tpb.SUCCEEDED
        assert path.read_bytes() == data
        assert not tree.fs.hsm_state(path).flags & HS.RELEASED

        mid = submit(client, fid, "remove")
        assert client.wait([mid], deadline=20)[mid].state == tpb.SUCCEEDED
        assert not object_path(tree.archive, fid).exists()
        assert not tree.fs.hsm_state(path).flags & HS.ARCHIVED
        # the coordinator acknowledged every completion (nothing to send again), and renews the lease
        (session,) = agent._sessions
        wait_for(lambda: not session.unacked and session.acks_done, what="every completion acknowledged")
        assert agent.leases.duration > 0 and agent.leases.holding() == 0


def test_never_more_running_than_slots(coordinator: Any, client: CoordinatorClient, tree: Tree) -> None:
    # 6 archives of 128 KiB at 512 KiB/s: about 0.25 s each, 2 at a time
    files = [tree.add(f"f{i}", 128 * KiB) for i in range(6)]
    cfg = agent_config(
        coordinator, tree,
        slots=SlotsConfig(archive=2, restore=1, remove=1),
        mover={"bandwidth_limit": 512 * KiB, "chunk_size": 16 * KiB},
    )
    with running_agent(cfg) as agent:
        wait_for(lambda: registered(client, "a1"), what="agent a1 to register")
        ids = [submit(client, fid, "archive") for _, fid, _ in files]
        seen_started: list[int] = []  # snapshots of the coordinator's view
        seen_agent_running: list[int] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            seen_started.append(len(list(client.list_actions(states=["STARTED"]))))
            (info,) = [a for a in client.status().agents if a.agent_id == "a1"]
            seen_agent_running.append(info.running.archive)
            if all(action(client, i).state == tpb.SUCCEEDED for i in ids):
                break
            time.sleep(0.01)
        else:
            raise AssertionError("archives did not all succeed within 20 s")
        assert max(seen_started) <= 2 and max(seen_agent_running) <= 2
        assert max(seen_started) == 2  # both slots were used
        assert agent.peak_running()["ARCHIVE"] == 2
        for _, fid, data in files:
            assert object_path(tree.archive, fid).read_bytes() == data


def test_cancel_reaches_the_running_job(coordinator: Any, client: CoordinatorClient, tree: Tree) -> None:
    # 4 MiB at 256 KiB/s would take 16 s; the cancel must stop it at once
    path, fid, _ = tree.add("big", 4096 * KiB)
    small_path, small_fid, small_data = tree.add("small", 10 * KiB)
    cfg = agent_config(
        coordinator, tree,
        slots=SlotsConfig(archive=1, restore=1, remove=1),
        mover={"bandwidth_limit": 256 * KiB, "chunk_size": 16 * KiB},
    )
    with running_agent(cfg) as agent:
        wait_for(lambda: registered(client, "a1"), what="agent a1 to register")
        aid = submit(client, fid, "archive")
        # progress travels to the coordinator while the job runs
        a = wait_for(
            lambda: (x := action(client, aid)).state == tpb.STARTED and x.bytes_done > 0 and x,
            what="progress of the running archive",
        )
        assert a.bytes_total == 4096 * KiB
        t0 = time.monotonic()
        (res,) = client.cancel([aid], reason="test cancel")
        assert res.outcome == 2  # CANCEL_SENT: it was running
        final = client.wait([aid], deadline=5)[aid]
        assert time.monotonic() - t0 < 3
        assert final.state == tpb.CANCELED
        assert final.errno == errno.ECANCELED
        obj = object_path(tree.archive, fid)
        assert not obj.exists() and not Path(f"{obj}_tmp").exists()
        assert not tree.fs.hsm_state(path).flags & HS.ARCHIVED
        wait_for(lambda: not agent.running_actions(), what="the job to leave the agent")

        # the slot came back: the only archive slot takes the next one
        sid = submit(client, small_fid, "archive")
        assert client.wait([sid], deadline=10)[sid].state == tpb.SUCCEEDED
        assert object_path(tree.archive, small_fid).read_bytes() == small_data


def test_stream_loss_keeps_the_job_running(coordinator: Any, client: CoordinatorClient, tree: Tree) -> None:
    path, fid, data = tree.add("f", 512 * KiB)
    cfg = agent_config(coordinator, tree, mover={"bandwidth_limit": 512 * KiB, "chunk_size": 16 * KiB})
    with running_agent(cfg) as agent:
        wait_for(lambda: registered(client, "a1"), what="agent a1 to register")
        aid = submit(client, fid, "archive")
        wait_for(lambda: agent.running_actions() == [(aid, 1)], what="the archive to start")
        # the coordinator drops the agent's stream while the copy runs
        old = coordinator.call(lambda: coordinator.node.sessions["a1"])
        coordinator.call(lambda: old.out.put_nowait(None))
        wait_for(
            lambda: coordinator.call(lambda: coordinator.node.sessions["a1"]) is not old,
            what="the agent to reconnect",
        )
        assert agent.running_actions() == [(aid, 1)]  # the copy went on
        final = client.wait([aid], deadline=10)[aid]
        assert final.state == tpb.SUCCEEDED and final.attempt == 1  # not run twice
        assert object_path(tree.archive, fid).read_bytes() == data


def test_agent_back_after_its_job_was_requeued_never_runs_it_twice(
    coordinator_factory: Any, tree: Tree
) -> None:
    # the agent stays away longer than agent_grace: the coordinator requeues
    # its archive, tells it to stop the old attempt when it returns, and
    # hands it the action again as attempt 2
    rc = coordinator_factory(agent_grace=0.2)
    _, fid, data = tree.add("f", 384 * KiB)  # ~1 s at 384 KiB/s
    cfg = agent_config(
        rc, tree, reconnect_min_delay=0.6, reconnect_max_delay=0.6,
        mover={"bandwidth_limit": 384 * KiB, "chunk_size": 16 * KiB},
    )
    with rc.client(timeout=10) as client, running_agent(cfg) as agent:
        wait_for(lambda: registered(client, "a1"), what="agent a1 to register")
        aid = submit(client, fid, "archive")
        wait_for(lambda: agent.running_actions() == [(aid, 1)], what="the archive to start")
        old = rc.call(lambda: rc.node.sessions["a1"])
        rc.call(lambda: old.out.put_nowait(None))
        wait_for(lambda: action(client, aid).state == tpb.WAITING, what="the coordinator to requeue it")
        final = client.wait([aid], deadline=10)[aid]
        assert final.state == tpb.SUCCEEDED, (final.errno, final.error)
        assert final.attempt == 2
        assert agent.peak_running()["ARCHIVE"] == 1  # never two copies at once
        assert object_path(tree.archive, fid).read_bytes() == data


def test_agent_waits_for_a_coordinator_that_starts_later(
    coordinator_factory: Any, tree: Tree, tls_ca: SessionCa
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    _, fid, data = tree.add("f", 1000)
    with running_agent(agent_config(address, tree, tls=tls_ca.agent("a1"))) as agent:
        time.sleep(0.3)  # a few failed connection attempts
        assert agent.connected() == []
        rc = coordinator_factory(listen=address)
        with rc.client(timeout=10) as client:
            wait_for(lambda: registered(client, "a1"), what="agent a1 to register")
            aid = submit(client, fid, "archive")
            assert client.wait([aid], deadline=10)[aid].state == tpb.SUCCEEDED
    assert object_path(tree.archive, fid).read_bytes() == data


def test_idle_agent_keeps_its_session_alive(coordinator: Any, client: CoordinatorClient, tree: Tree) -> None:
    # the test coordinator asks for a heartbeat every second
    with running_agent(agent_config(coordinator, tree)):
        (info,) = wait_for(lambda: [a for a in client.status().agents if a.agent_id == "a1" and a.replica])
        wait_for(
            lambda: [a for a in client.status().agents if a.agent_id == "a1" and a.last_seen > info.last_seen + 0.5],
            timeout=3, what="a heartbeat",
        )


def test_wrong_file_system_is_refused(coordinator: Any, client: CoordinatorClient, tree: Tree) -> None:
    _, fid, _ = tree.add("f", 10)
    with running_agent(agent_config(coordinator, tree)) as agent:
        wait_for(lambda: registered(client, "a1"), what="agent a1 to register")
        aid = submit(client, fid, "archive", fsname="other")
        final = client.wait([aid], deadline=10)[aid]
        assert final.state == tpb.FAILED
        assert final.errno == errno.ENODEV
        assert final.error == "this agent serves file system 'simfs', not 'other'"
        assert agent.peak_running()["ARCHIVE"] == 0  # never touched a file


def test_stop_waits_for_running_jobs(coordinator: Any, client: CoordinatorClient, tree: Tree) -> None:
    _, fid, data = tree.add("f", 256 * KiB)  # ~0.5 s at 512 KiB/s
    cfg = agent_config(coordinator, tree, drain_timeout=10.0,
                       mover={"bandwidth_limit": 512 * KiB, "chunk_size": 16 * KiB})
    at = AgentThread(cfg)
    try:
        wait_for(lambda: registered(client, "a1"), what="agent a1 to register")
        aid = submit(client, fid, "archive")
        wait_for(lambda: at.agent.running_actions(), what="the archive to start")
        assert at.stop() == 0
        # it finished and was reported before the agent left
        a = action(client, aid)
        assert a.state == tpb.SUCCEEDED
        assert object_path(tree.archive, fid).read_bytes() == data
    finally:
        if at.thread.is_alive():
            at.stop(now=True)


def test_stop_after_drain_timeout_gives_the_job_back(
    coordinator: Any, client: CoordinatorClient, tree: Tree
) -> None:
    path, fid, _ = tree.add("f", 4096 * KiB)  # 16 s at 256 KiB/s
    cfg = agent_config(coordinator, tree, drain_timeout=0.3,
                       mover={"bandwidth_limit": 256 * KiB, "chunk_size": 16 * KiB})
    at = AgentThread(cfg)
    try:
        wait_for(lambda: registered(client, "a1"), what="agent a1 to register")
        aid = submit(client, fid, "archive")
        wait_for(lambda: at.agent.running_actions(), what="the archive to start")
        t0 = time.monotonic()
        assert at.stop() == 0
        assert time.monotonic() - t0 < 5
        # not the user's cancel: the action is queued again for another agent
        a = action(client, aid)
        assert a.state == tpb.WAITING, a
        assert a.errno == errno.ECANCELED and "a1 stopped" in a.error
        assert not object_path(tree.archive, fid).exists()
        assert not tree.fs.hsm_state(path).flags & HS.ARCHIVED
    finally:
        if at.thread.is_alive():
            at.stop(now=True)


def test_agentd_process_end_to_end(coordinator_factory: Any, tree: Tree, tmp_path: Path) -> None:
    """The agentd process, with mutual TLS as in production: its own
    certificate (role agent, CN its agent id)."""
    coordinator, pki = tls_replica(coordinator_factory, tmp_path / "pki")
    pki.issue("proc1", "agent")
    client = CoordinatorClient(coordinator.address, timeout=10, tls=pki.files(ADMIN_CERT))
    files = [tree.add(f"f{i}", 20 * KiB) for i in range(3)]
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "agentd.cli",
            "--coordinators", coordinator.address,
            "--agent-id", "proc1", *pki.args("proc1"),
            "--fs-root", str(tree.fs.root),
            "--archive-root", str(tree.archive),
            "--slots", "archive=2",
        ],
        stderr=subprocess.PIPE, text=True, env={k: v for k, v in os.environ.items() if k != "HSM_COORDINATORS"},
    )
    try:
        wait_for(lambda: proc.poll() is not None or registered(client, "proc1"), what="agentd process to register")
        assert proc.poll() is None
        ids = [submit(client, fid, "archive") for _, fid, _ in files]
        final = client.wait(ids, deadline=20)
        assert all(a.state == tpb.SUCCEEDED for a in final.values())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        err = proc.stderr.read() if proc.stderr else ""
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for (_, fid, data), aid in zip(files, ids, strict=True):
        assert object_path(tree.archive, fid).read_bytes() == data
        # one line per start and end, with id, kind, fid, bytes, seconds
        assert f"action {aid}/1 ARCHIVE {fid} started" in err
        assert f"action {aid}/1 ARCHIVE {fid} succeeded: {20 * KiB} bytes in " in err
    assert "received SIGTERM: stopping" in err
    assert "Traceback" not in err


def test_backoff_stays_within_bounds() -> None:
    lo, hi = 0.2, 5.0
    delays = [backoff_delay(n, lo, hi, rand) for n in range(12) for rand in (lambda: 0.0, lambda: 0.999)]
    assert min(delays) >= lo and max(delays) <= hi
    assert backoff_delay(0, lo, hi, lambda: 0.999) < 0.25  # first retry is quick
    assert backoff_delay(10, lo, hi, lambda: 0.999) > 4.9  # later ones reach the cap


# --------------------------------------------------------------------------
# Protocol cases the coordinator does not produce on demand (duplicate and
# newer-attempt assignments, unknown cancels, over-sending): messages are
# handed straight to the agent's handler; its stream points at a closed port,
# so nothing is sent and the completions stay queued where we can read them.


def closed_port_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def assignment(action_id: int, attempt: int, fid: Fid, kind: int = tpb.ARCHIVE) -> Any:
    from hsm.v1 import agent_pb2

    return agent_pb2.CoordinatorMessage(assign=[agent_pb2.Assignment(
        action_id=action_id, attempt=attempt, fsname="simfs",
        fid=tpb.Fid(seq=fid.seq, oid=fid.oid, ver=fid.ver), kind=kind, archive_id=1,
    )])


def cancel(action_id: int, attempt: int) -> Any:
    from hsm.v1 import agent_pb2

    return agent_pb2.CoordinatorMessage(cancel=[agent_pb2.CancelOrder(action_id=action_id, attempt=attempt)])


async def until(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    return await until_async(cond, timeout, what)


def drive(tree: Tree, body: Callable[[Agent, Any], Any], **kw: Any) -> None:
    cfg = agent_config(closed_port_address(), tree, **kw)

    async def main() -> None:
        agent = Agent(cfg, make_backend(cfg), make_mover(cfg))
        task = asyncio.ensure_future(agent.run())
        await until(lambda: agent._sessions, what="the agent to start")
        try:
            await body(agent, agent._sessions[0])
        finally:
            agent._sessions[0].pending_done.clear()  # read by the test; nowhere to deliver them
            agent.stop(now=True)
            assert await task == 0

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def dones(session: Any) -> list[tuple[int, int, int]]:
    return [(d.action_id, d.attempt, d.errno) for d in session.pending_done]


SLOW = {"bandwidth_limit": 256 * KiB, "chunk_size": 16 * KiB}


def test_duplicate_assignment_ignored_unknown_cancel_confirmed_and_late_assignment_refused(tree: Tree) -> None:
    _, fid, data = tree.add("f", 64 * KiB)  # ~0.25 s
    _, other, _ = tree.add("g", 64 * KiB)

    async def body(agent: Agent, session: Any) -> None:
        agent.on_message(session, assignment(7, 1, fid))
        agent.on_message(session, assignment(7, 1, fid))  # the same again
        agent.on_message(session, cancel(99, 1))  # nothing of that id here: confirmed at once
        agent.on_message(session, cancel(7, 5))  # another attempt than the one running
        assert agent.running_actions() == [(7, 1)]
        await until(lambda: len(dones(session)) == 2, what="the archive to end")
        assert sorted(dones(session)) == [(7, 1, 0), (99, 1, errno.ECANCELED)]
        # the assignment of 99/1 arrives late (over another replica's stream):
        # refused, never run, since the coordinator may have requeued it
        agent.on_message(session, assignment(99, 1, other))
        assert agent.running_actions() == []
        await until(lambda: len(dones(session)) == 3, what="the refusal")
        assert dones(session)[-1] == (99, 1, errno.ECANCELED)
        agent.on_message(session, cancel(7, 1))  # after it ended here: the same completion again
        await until(lambda: len(dones(session)) == 4, what="the completion sent again")
        assert dones(session)[-1] == (7, 1, 0)
        assert agent.peak_running()["ARCHIVE"] == 1

    drive(tree, body, mover=SLOW)
    assert object_path(tree.archive, fid).read_bytes() == data


def test_newer_attempt_waits_for_the_cancelled_one(tree: Tree) -> None:
    _, fid, data = tree.add("f", 64 * KiB)

    async def body(agent: Agent, session: Any) -> None:
        agent.on_message(session, assignment(7, 1, fid))
        agent.on_message(session, cancel(7, 1))
        agent.on_message(session, assignment(7, 2, fid))  # may arrive before attempt 1 stopped
        await until(lambda: len(dones(session)) == 2, what="both attempts to end")
        assert dones(session) == [(7, 1, errno.ECANCELED), (7, 2, 0)]
        assert agent.peak_running()["ARCHIVE"] == 1

    drive(tree, body, mover=SLOW)
    assert object_path(tree.archive, fid).read_bytes() == data


def test_newer_attempt_of_a_running_action_continues_it(tree: Tree) -> None:
    _, fid, data = tree.add("f", 64 * KiB)

    async def body(agent: Agent, session: Any) -> None:
        agent.on_message(session, assignment(7, 1, fid))
        agent.on_message(session, assignment(7, 2, fid))
        assert agent.running_actions() == [(7, 2)]
        await until(lambda: dones(session), what="the archive to end")
        assert dones(session) == [(7, 2, 0)]

    drive(tree, body, mover=SLOW)
    assert object_path(tree.archive, fid).read_bytes() == data


def test_assignments_beyond_the_slots_are_given_back(tree: Tree) -> None:
    files = [tree.add(f"f{i}", 64 * KiB) for i in range(3)]

    async def body(agent: Agent, session: Any) -> None:
        for i, (_, fid, _) in enumerate(files):
            agent.on_message(session, assignment(10 + i, 1, fid))
        assert agent.running_actions() == [(10, 1), (11, 1)]
        (refused,) = session.pending_done
        assert (refused.action_id, refused.errno, refused.retry, refused.handback) == (12, errno.EAGAIN, True, True)
        assert refused.message == "no free archive slot on this agent"
        await until(lambda: len(dones(session)) == 3, what="the archives to end")
        assert agent.peak_running()["ARCHIVE"] == 2

    drive(tree, body, mover=SLOW, slots=SlotsConfig(archive=2, restore=1, remove=1))


def test_a_run_whose_lease_ends_is_stopped_given_back_and_not_published(tree: Tree) -> None:
    """No leader renews the lease (the stream's replica is unreachable):
    the copy stops within the lease, is given back (no attempt used: not
    the action's fault) and its object is never renamed into place."""
    path, fid, _ = tree.add("f", 1024 * KiB)  # 4 s at 256 KiB/s

    async def body(agent: Agent, session: Any) -> None:
        agent.leases.welcomed(session.address, 0.5, 0.1, time.monotonic())
        t0 = time.monotonic()
        agent.on_message(session, assignment(7, 1, fid))
        await until(lambda: session.pending_done, what="the copy to stop")
        assert time.monotonic() - t0 < 2.0, "stopped within its lease (0.5 s), long before the copy's 4 s"
        (d,) = session.pending_done
        assert (d.action_id, d.attempt, d.errno, d.retry, d.handback) == (7, 1, errno.ECANCELED, True, True)
        assert "lost its lease" in d.message
        assert agent.running_list() == [(7, 1)], "held until the coordinator hears the completion"

    drive(tree, body, mover=SLOW)
    obj = object_path(tree.archive, fid)
    assert not obj.exists() and not list(obj.parent.glob(obj.name + "_tmp*"))
    assert not tree.fs.hsm_state(path).flags & HS.ARCHIVED


def test_completions_are_kept_until_acknowledged_and_sent_again(tree: Tree) -> None:
    from agentd.daemon import RESEND_AFTER
    from hsm.v1 import agent_pb2

    async def body(agent: Agent, session: Any) -> None:
        session.acks_done = True
        a, b = (agent_pb2.Done(action_id=i, attempt=1) for i in (7, 8))
        session._sent([a, b])  # written to the stream
        assert agent.running_list() == [(7, 1), (8, 1)], "the coordinator holds them until it hears them"
        agent.on_message(session, agent_pb2.CoordinatorMessage(applied=[agent_pb2.RunningAction(action_id=7,
                                                                                                attempt=1)]))
        assert list(session.unacked) == [(8, 1)]
        now = time.monotonic()
        assert session.resend(now + RESEND_AFTER / 2) == 0
        assert session.resend(now + RESEND_AFTER) == 1  # never acknowledged: sent again
        assert dones(session) == [(8, 1, 0)] and not session.unacked
        session.pending_done.clear()
        session._sent([b])
        session._lost()  # the stream died, maybe with the replica that had it
        assert dones(session) == [(8, 1, 0)], "delivered again on the next stream"

    drive(tree, body)
