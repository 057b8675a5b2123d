"""The Raft adapter against real pysyncobj on 127.0.0.1 free ports: replicas
in this process (one asyncio loop, each replica with its own threads) and in
separate processes that are SIGKILLed. Every wait polls a condition with a
deadline."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from coordinator.raft import (
    LeaderInfo,
    NotLeader,
    ProposalTimeout,
    RaftShard,
    RaftStorageError,
    RaftTuning,
)
from coordinator.raft.config import free_port
from coordinator.state import Outcome, Result, ShardConfig, ShardState, SubmitReply
from tests.cluster import until_async
from tests.raft_proc import FAST, fingerprint, submit

PASSWORD = "raft-test-password"
HERE = Path(__file__).resolve().parent


def run(body: Callable[[], Awaitable[None]], timeout: float = 45.0) -> None:
    async def main() -> None:
        await asyncio.wait_for(body(), timeout)

    asyncio.run(main())


until = until_async


class Cluster:
    """Replicas of one or more shards in this process, on the running loop."""

    def __init__(self, tmp: Path, n: int, tuning: RaftTuning = FAST, shards: int = 1) -> None:
        self.tmp = tmp
        self.tuning = tuning
        self.addrs = {s: [f"127.0.0.1:{free_port()}" for _ in range(n)] for s in range(shards)}
        self.live: dict[tuple[int, str], RaftShard] = {}
        #: per replica, every applied command: (first reply's action id, proposed_here)
        self.applied: dict[tuple[int, str], list[tuple[int, bool]]] = {}
        #: per replica, the on_leader_change notifications
        self.changes: dict[tuple[int, str], list[LeaderInfo]] = {}

    def start(self, addr: str, shard: int = 0, password: str = PASSWORD, peers: list[str] | None = None,
              **kw: Any) -> RaftShard:
        key = (shard, addr)
        log = self.applied.setdefault(key, [])

        def on_applied(index: int, res: Result, here: bool) -> None:
            assert index == shard
            rep = res.replies[0] if res.replies else None
            log.append((rep.action_id if isinstance(rep, SubmitReply) else 0, here))

        changes = self.changes.setdefault(key, [])
        rs = RaftShard(shard, addr, peers if peers is not None else self.addrs[shard],
                       self.tmp / addr.replace(":", "_"), password,
                       lambda: ShardState(ShardConfig(shard=shard)), on_applied,
                       asyncio.get_running_loop(), self.tuning,
                       on_leader_change=lambda _i, info: changes.append(info), **kw)
        self.live[key] = rs
        return rs

    def start_all(self, shard: int = 0, **kw: Any) -> list[RaftShard]:
        return [self.start(a, shard, **kw) for a in self.addrs[shard]]

    def replicas(self, shard: int = 0) -> list[RaftShard]:
        return [rs for (s, _), rs in self.live.items() if s == shard]

    async def stop(self, rs: RaftShard) -> None:
        del self.live[(rs.index, rs.self_addr)]
        await rs.aclose()

    async def leader(self, shard: int = 0, timeout: float = 10.0) -> RaftShard:
        def ready() -> RaftShard | None:
            leaders = [rs for rs in self.replicas(shard) if rs.leader_ready]
            return leaders[0] if len(leaders) == 1 else None
        return await until(ready, timeout, f"a ready leader of shard {shard}")  # type: ignore[no-any-return]

    async def converged(self, shard: int = 0, timeout: float = 10.0) -> str:
        """Every live replica applied the same entries; returns the common fingerprint."""
        reps = self.replicas(shard)

        def same() -> str | None:
            if len({rs.applied_index for rs in reps}) != 1 or reps[0].applied_index < reps[0].commit_index:
                return None
            fps = set()
            for rs in reps:
                with rs.reading() as state:
                    fps.add(fingerprint(state))
            return fps.pop() if len(fps) == 1 else None
        return await until(same, timeout, f"replicas of shard {shard} to converge")  # type: ignore[no-any-return]

    async def close(self) -> None:
        for rs in list(self.live.values()):
            await self.stop(rs)


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


def created(results: list[Result]) -> int:
    (res,) = results
    (rep,) = res.replies
    assert isinstance(rep, SubmitReply) and rep.outcome == Outcome.CREATED, rep
    return rep.action_id


# --------------------------------------------------------------------------


def test_three_replicas_commit_converge_group_commit_and_transfer(tmp: Path) -> None:
    async def body() -> None:
        cl = Cluster(tmp, 3)
        cl.start_all()
        try:
            leader = await cl.leader()
            followers = [rs for rs in cl.replicas() if rs is not leader]

            # a follower refuses and names the leader
            with pytest.raises(NotLeader) as err:
                await followers[0].propose(submit("nope", 1), timeout=2)
            assert err.value.leader == leader.self_addr

            # sequential proposals: one Raft entry each, results in order
            t0 = time.perf_counter()
            ids = [created(await leader.propose(submit(f"seq-{i}", 100 + i), timeout=5)) for i in range(50)]
            single_ms = (time.perf_counter() - t0) / 50 * 1e3
            assert ids == sorted(ids) and len(set(ids)) == 50

            # group commit: 1000 concurrent proposals ride in a few entries
            entries0 = leader.commit_index
            t0 = time.perf_counter()
            results = await asyncio.gather(
                *(leader.propose(submit(f"conc-{i}", 1000 + i), timeout=20) for i in range(1000)))
            rate = 1000 / (time.perf_counter() - t0)
            assert len({created(r) for r in results}) == 1000
            entries = leader.commit_index - entries0
            assert entries <= 50, f"1000 concurrent proposals used {entries} Raft entries"
            print(f"\ncommit latency {single_ms:.2f} ms (1 in flight); 1000 concurrent: "
                  f"{rate:.0f} commits/s in {entries} entries; fsync {leader.stats.fsyncs} calls, "
                  f"{leader.stats.fsync_seconds / max(1, leader.stats.fsyncs) * 1e3:.3f} ms avg")

            # a retry with the same idempotency key changes nothing
            again = await leader.propose(submit("conc-7", 1000 + 7), timeout=5)
            assert again[0].replies[0] == results[7][0].replies[0]

            fp = await cl.converged()
            for rs in cl.replicas():
                with rs.reading() as state:
                    state.check_invariants()
                    assert len(state.actions) == 1050
            # on_applied: every replica, every command, the same log order;
            # proposed_here only where it was proposed
            for f in followers:  # each follower made its entries durable before acknowledging
                assert f.stats.fsyncs >= 50
            logs = {addr: cl.applied[(0, addr)] for addr in cl.addrs[0]}
            # (deliveries reach the loop just after applied_index moves)
            await until(lambda: all(len(log) >= 1051 for log in logs.values()), 5, "on_applied calls")
            orders = {tuple(i for i, _ in log) for log in logs.values()}
            assert len(orders) == 1 and len(next(iter(orders))) == 1051
            assert all(here for _, here in logs[leader.self_addr])
            assert not any(here for f in followers for _, here in logs[f.self_addr])

            # hand leadership over to a chosen follower
            target = followers[1]
            assert await leader.transfer_leadership(target.self_addr, timeout=5) == target.self_addr
            await until(lambda: target.leader_ready, 5, "the new leader to be ready")
            with pytest.raises(NotLeader) as err:
                await leader.propose(submit("late", 5), timeout=2)
            assert err.value.leader == target.self_addr
            created(await target.propose(submit("after-transfer", 5), timeout=5))
            assert await cl.converged() != fp
        finally:
            await cl.close()

    run(body)


def test_silent_connections_to_a_raft_port_are_closed_and_bounded_per_host(tmp: Path) -> None:
    """Connections that never identify themselves (sealed with the cluster
    password) are closed after UNKNOWN_TIMEOUT; one host holds at most
    UNKNOWN_PER_HOST at once (the oldest are closed to make room); the
    members keep working throughout."""
    from coordinator.raft import transport

    async def body() -> None:
        cl = Cluster(tmp, 2, FAST)
        for a in cl.addrs[0]:
            cl.start(a)
        try:
            leader = await cl.leader()
            host, port = leader.self_addr.rsplit(":", 1)
            socks = []
            for _ in range(40):
                s = socket.create_connection((host, int(port)), timeout=5)
                s.setblocking(False)
                socks.append(s)
            t0 = time.monotonic()

            def closed(s: socket.socket) -> bool:
                try:
                    return s.recv(1) == b""
                except BlockingIOError:
                    return False
                except OSError:
                    return True

            # beyond the per-host bound: the oldest closed to make room
            await until_async(lambda: sum(map(closed, socks)) >= 40 - transport.UNKNOWN_PER_HOST, 5,
                              "connections beyond the per-host bound closed")
            open_now = [s for s in socks if not closed(s)]
            assert len(open_now) <= transport.UNKNOWN_PER_HOST
            assert all(closed(s) for s in socks[:40 - transport.UNKNOWN_PER_HOST])
            created(await leader.propose(submit("during", 1), timeout=5))
            # the rest: closed once they had their time to identify themselves
            await until_async(lambda: all(map(closed, socks)), transport.UNKNOWN_TIMEOUT + 5,
                              "silent connections closed")
            assert time.monotonic() - t0 >= transport.UNKNOWN_TIMEOUT - 1 or not open_now
            created(await leader.propose(submit("after", 2), timeout=5))
            for s in socks:
                s.close()
        finally:
            await cl.close()

    run(body)


@pytest.mark.parametrize("encrypt", [True, False], ids=["fernet", "hmac"])
def test_wrong_password_and_raw_connections_are_ignored(tmp: Path, caplog: pytest.LogCaptureFixture,
                                                        encrypt: bool) -> None:
    caplog.set_level(logging.WARNING, logger="coordinator.raft")
    marker = tmp / "unpickled"

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(marker), "w"))

    async def body() -> None:
        cl = Cluster(tmp, 3, replace(FAST, encrypt=encrypt))
        a, b, c = cl.addrs[0]
        cl.start(a)
        cl.start(b)
        intruder = cl.start(c, password="not-the-password")
        try:
            leader = await cl.leader()
            assert leader is not intruder
            created(await leader.propose(submit("k1", 1), timeout=5))

            # a raw client speaking pysyncobj's framing without the password
            host, port = leader.self_addr.rsplit(":", 1)
            frames = [pickle.dumps(Evil()),
                      pickle.dumps({"type": "append_entries", "term": 10**6, "commit_index": 10**6,
                                    "entries": [], "prevLogIdx": 1, "prevLogTerm": 0}),
                      b"\x00" * 64]
            for payload in frames:
                data = zlib.compress(payload)
                with socket.create_connection((host, int(port)), timeout=5) as sock:
                    sock.sendall(struct.pack("i", len(data)) + data)
                    sock.settimeout(5)
                    assert sock.recv(100) == b"", "the Raft port must drop an unauthenticated peer"

            created(await leader.propose(submit("k2", 2), timeout=5))
            await until(lambda: all(rs.applied_index == leader.commit_index
                                    for rs in cl.replicas() if rs is not intruder), 5, "followers")
            assert not marker.exists(), "an unauthenticated message was unpickled"
            assert leader.is_leader and leader.term < 10**6
            # the replica with the wrong password never joined
            assert intruder.leader is None and not intruder.is_leader
            with intruder.reading() as state:
                assert not state.actions
            assert intruder.applied_index <= 1
            if not encrypt:  # Fernet tokens that fail are dropped by pysyncobj itself, silently
                assert any("failed authentication" in r.getMessage() for r in caplog.records)
        finally:
            await cl.close()

    run(body)


def test_minority_replica_catches_up_through_a_snapshot(tmp: Path) -> None:
    tuning = replace(FAST, compaction_min_entries=20)

    async def body() -> None:
        cl = Cluster(tmp, 3, tuning)
        cl.start_all()
        try:
            leader = await cl.leader()
            for i in range(10):
                created(await leader.propose(submit(f"a-{i}", i), timeout=5))
            await cl.converged()
            lagging = next(rs for rs in cl.replicas() if rs is not leader)
            addr, behind = lagging.self_addr, lagging.applied_index
            await cl.stop(lagging)

            for i in range(120):
                created(await leader.propose(submit(f"b-{i}", 1000 + i), timeout=5))
            st = await until(lambda: leader.stats.snapshots_written >= 2, 10, "leader snapshots")
            assert st
            status = await leader.status()
            first_kept = status.last_log_index - status.log_entries + 1
            assert first_kept > behind + 1, "the leader's log still holds what the follower misses"

            back = cl.start(addr)
            fp = await cl.converged(timeout=15)
            assert back.stats.snapshots_installed >= 1
            with back.reading() as state:
                state.check_invariants()
                assert len(state.actions) == 130
                assert fingerprint(state) == fp
            # and it keeps up with new entries after the snapshot
            created(await leader.propose(submit("c", 5000), timeout=5))
            await cl.converged()
        finally:
            await cl.close()

    run(body)


def test_leader_loss_and_isolated_leader_steps_down(tmp: Path) -> None:
    async def body() -> None:
        cl = Cluster(tmp, 3)
        cl.start_all()
        try:
            old = await cl.leader()
            created(await old.propose(submit("x", 1), timeout=5))
            await cl.stop(old)
            t0 = time.monotonic()
            new = await cl.leader(timeout=5)
            print(f"\nnew leader after {time.monotonic() - t0:.2f}s")
            assert new.self_addr != old.self_addr
            # the hook saw it happen on the loop, in order
            seen = cl.changes[(0, new.self_addr)]
            await until(lambda: seen[-1].ready, 2, "the hook to report a ready leader")
            assert seen[-1].is_leader and seen[-1].leader == new.self_addr
            assert any(not c.is_leader and c.leader == old.self_addr for c in seen)
            created(await new.propose(submit("y", 2), timeout=5))

            # isolate the new leader: its proposals cannot commit, and it steps
            # down within leader_fallback
            other = next(rs for rs in cl.replicas() if rs is not new)
            await cl.stop(other)
            t0 = time.monotonic()
            with pytest.raises((ProposalTimeout, NotLeader)):
                await new.propose(submit("z", 3), timeout=1.0)
            await until(lambda: not new.is_leader, 5, "the isolated leader to step down")
            print(f"isolated leader stepped down after {time.monotonic() - t0:.2f}s")
            with pytest.raises(NotLeader):
                await new.propose(submit("w", 4), timeout=1.0)
        finally:
            await cl.close()

    run(body)


def test_leaders_spread_over_replicas_by_preference(tmp: Path) -> None:
    async def body() -> None:
        cl = Cluster(tmp, 3, shards=2)
        want = {0: cl.addrs[0][0], 1: cl.addrs[1][1]}
        for s in (0, 1):
            for addr in cl.addrs[s]:
                cl.start(addr, shard=s, preferred_leader=want[s])
        try:
            for s in (0, 1):
                leader = await cl.leader(s)
                created(await leader.propose(submit(f"s{s}", s), timeout=5))
            await until(lambda: all(any(rs.is_leader and rs.self_addr == want[s] for rs in cl.replicas(s))
                                    for s in (0, 1)), 10, "each shard led by its preferred replica")
        finally:
            await cl.close()

    run(body)


def test_membership_add_and_remove_a_replica(tmp: Path) -> None:
    async def body() -> None:
        cl = Cluster(tmp, 3)
        cl.start_all()
        try:
            leader = await cl.leader()
            for i in range(5):
                created(await leader.propose(submit(f"m-{i}", i), timeout=5))
            new_addr = f"127.0.0.1:{free_port()}"
            members = [*cl.addrs[0], new_addr]
            newcomer = cl.start(new_addr, peers=members)
            await leader.add_peer(new_addr, timeout=10)
            assert new_addr in leader.peers
            fp = await cl.converged(timeout=10)
            with newcomer.reading() as state:
                assert len(state.actions) == 5 and fingerprint(state) == fp

            with pytest.raises(ValueError, match="transfer leadership"):
                await leader.remove_peer(leader.self_addr)
            await leader.remove_peer(new_addr, timeout=10)
            assert new_addr not in leader.peers
            await cl.stop(newcomer)
            created(await leader.propose(submit("after", 99), timeout=5))
            await cl.converged()
        finally:
            await cl.close()

    run(body)


def test_refuses_bad_configuration(tmp: Path) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        addr = f"127.0.0.1:{free_port()}"

        def make(a: str = addr, password: str = PASSWORD, d: Path = tmp, **kw: Any) -> RaftShard:
            return RaftShard(0, a, [a], d, password, ShardState, lambda *_: None, loop, FAST, **kw)

        for bad in ("", "short", None):
            with pytest.raises(ValueError, match="password"):
                make(password=bad)  # type: ignore[arg-type]
        for bad_addr in ("localhost", "127.0.0.1:0", "0.0.0.0:7000", "127.0.0.1:99999"):
            with pytest.raises(ValueError, match="host:port|every interface"):
                make(a=bad_addr)
        with pytest.raises(ValueError, match="election"):
            RaftShard(0, addr, [], tmp, PASSWORD, ShardState, lambda *_: None, loop,
                      replace(FAST, election_min=0.1))
        assert not any(tmp.iterdir()), "bad configuration changed nothing on disk"

        # a busy port: a clear error, nothing left running
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            with pytest.raises(OSError, match="cannot listen"):
                make(a=f"127.0.0.1:{port}", d=tmp / "busy")
        # one data directory, one process
        rs = make()
        try:
            with pytest.raises(RaftStorageError, match="in use"):
                make(a=f"127.0.0.1:{free_port()}")
        finally:
            await rs.aclose()

    run(body)


def test_single_replica_restart_replays_journal_and_cuts_a_torn_tail(
        tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="coordinator.raft")
    tuning = replace(FAST, segment_bytes=600)
    addr = f"127.0.0.1:{free_port()}"

    async def body() -> None:
        loop = asyncio.get_running_loop()

        def make() -> RaftShard:
            return RaftShard(0, addr, [], tmp, PASSWORD, ShardState, lambda *_: None, loop, tuning)

        rs = make()
        await until(lambda: rs.leader_ready, 5, "a single replica to lead")
        for i in range(12):
            created(await rs.propose(submit(f"j-{i}", i), timeout=5))
        with rs.reading() as state:
            fp = fingerprint(state)
        await rs.aclose()

        segments = sorted((tmp / "shard-0").glob("journal-*.log"))
        assert len(segments) > 2, "small segments rotate"
        with open(segments[-1], "ab") as f:
            f.write(b"\x10\x00\x00\x00torn-record")  # a write cut short by a crash

        rs = make()
        try:
            await until(lambda: rs.leader_ready, 5, "the restarted replica to lead")
            with rs.reading() as state:
                assert fingerprint(state) == fp
            created(await rs.propose(submit("j-after", 100), timeout=5))
            assert any("incomplete record" in r.getMessage() for r in caplog.records)
        finally:
            await rs.aclose()

        # damage in the middle of the journal is not a torn write: refuse to start
        data = bytearray(segments[0].read_bytes())
        data[-3] ^= 0xFF
        segments[0].write_bytes(bytes(data))
        with pytest.raises(RaftStorageError, match="damaged"):
            make()

    run(body)


# --------------------------------------------------------------------------
# Multi-process: SIGKILL every replica under load, restart, nothing acknowledged lost
# --------------------------------------------------------------------------


class Proc:
    def __init__(self, args: list[str]) -> None:
        self.p = subprocess.Popen([sys.executable, str(HERE / "raft_proc.py"), *args],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, cwd=HERE.parent)
        self.lines: list[str] = []
        self.err: list[str] = []
        threading.Thread(target=self._read, args=(self.p.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._read, args=(self.p.stderr, self.err), daemon=True).start()

    @staticmethod
    def _read(stream: Any, out: list[str]) -> None:
        for line in stream:
            out.append(line.rstrip("\n"))

    def kill(self) -> None:
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGKILL)
        self.p.wait(10)

    def stop(self) -> None:
        if self.p.poll() is None:
            assert self.p.stdin is not None
            self.p.stdin.close()
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


def test_sigkill_all_replicas_under_load_loses_no_acknowledged_write(tmp: Path) -> None:
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]

    def args(i: int, *extra: str) -> list[str]:
        return ["--self", addrs[i], "--peers", ",".join(addrs), "--data", str(tmp / f"r{i}"),
                "--password", PASSWORD, "--compact", "40", *extra]

    procs = [Proc(args(i, "--load", f"r{i}", "--oid-base", str(1_000_000 * (i + 1)))) for i in range(3)]
    try:
        deadline = time.monotonic() + 20
        while sum(len(p.lines) for p in procs) < 600:
            assert time.monotonic() < deadline, f"no load: {[p.err[-5:] for p in procs]}"
            assert all(p.p.poll() is None for p in procs), [p.err[-5:] for p in procs]
            time.sleep(0.01)
        for p in procs:  # all at once, mid-load
            os.kill(p.p.pid, signal.SIGKILL)
        for p in procs:
            p.kill()
    finally:
        for p in procs:
            p.kill()
    acked = {line[4:] for p in procs for line in p.lines if line.startswith("ACK ")}
    assert len(acked) >= 500
    print(f"\n{len(acked)} acknowledged before SIGKILL; snapshots:",
          [(tmp / f"r{i}" / "shard-0" / "snapshot").exists() for i in range(3)],
          "journal segments:", [len(list((tmp / f"r{i}" / "shard-0").glob("journal-*"))) for i in range(3)])
    assert any((tmp / f"r{i}" / "shard-0" / "snapshot").exists() for i in range(3)), "compaction ran"

    procs = [Proc(args(i, "--verify", "m1")) for i in range(3)]
    try:
        deadline = time.monotonic() + 20
        while not all(any(x.startswith("FP ") for x in p.lines) for p in procs):
            assert time.monotonic() < deadline, f"no recovery: {[p.err[-5:] for p in procs]}"
            assert all(p.p.poll() is None for p in procs), [p.err[-5:] for p in procs]
            time.sleep(0.02)
    finally:
        for p in procs:
            p.stop()
    fps = set()
    for p in procs:
        keys = set(json.loads(next(x for x in p.lines if x.startswith("KEYS "))[5:]))
        missing = acked - keys
        assert not missing, f"{len(missing)} acknowledged keys lost, e.g. {sorted(missing)[:5]}"
        fps.add(next(x for x in p.lines if x.startswith("FP ")))
    assert len(fps) == 1, "replicas recovered different states"


def test_journal_keeps_acknowledged_entries_when_pysyncobj_truncates_identical_ones(tmp: Path) -> None:
    """pysyncobj drops a follower's entries whenever a re-sent AppendEntries
    overlaps them, even identical ones. Our journal keeps them on disk until
    a different entry really replaces them, so a crash in between cannot
    lose an entry the follower acknowledged."""
    from coordinator.raft import RaftStats
    from coordinator.raft.journal import _SegmentJournal

    d = tmp / "j"
    d.mkdir()
    j = _SegmentJournal(d, 0, True, 1 << 20, RaftStats())
    entries = [(b"cmd-%d" % i, i, 1) for i in range(1, 8)]
    for e in entries:
        j.add(*e)
    j.sync()
    j.deleteEntriesFrom(4)  # a re-send overlapping entries 5..7
    j.add(*entries[4])  # identical entry 5 comes back
    assert list(j[:]) == entries[:5]
    j._destroy()  # crash before 6 and 7 are re-sent: they must still be there
    j = _SegmentJournal(d, 0, True, 1 << 20, RaftStats())
    assert list(j[:]) == entries

    j.deleteEntriesFrom(5)  # a real conflict: a new leader's entry 6 in term 2
    j.add(b"other", 6, 2)
    j.sync()
    j._destroy()
    j = _SegmentJournal(d, 0, True, 1 << 20, RaftStats())
    assert list(j[:]) == [*entries[:5], (b"other", 6, 2)]
    j._destroy()
