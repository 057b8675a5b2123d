"""Moving a shard's group member to another replica while the cluster
serves (issue 19, item 2), with real replica processes, agentd processes and
the posix mover: 4 replicas, 4 shards in groups of 3. ``hsm-coordinator
shard move`` under a flood of archives; kill -9 of the joining replica and
of the leader mid-move; every replica killed mid-move and started again.
Each test ends with nothing lost (every file archived, every action
SUCCEEDED), nothing run twice (the agents' logs) and the members of every
group holding identical states."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hsm.client import CoordinatorClient
from hsm.fid import Fid
from hsm.hsmflags import HS
from hsm.v1 import types_pb2 as T
from tests.cluster import listening, until
from tests.readme import block_after, shape
from tests.test_system_agents import KiB, Rig

pytestmark = pytest.mark.slow  # real processes, seconds per test

SHARDS = 4
DOC = Path(__file__).resolve().parent.parent / "docs" / "scale-out.md"


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    r = Rig(tmp_path, replicas=4, shards=SHARDS, replication=3, agent_grace=3.0)
    try:
        yield r  # type: ignore[misc]
    finally:
        r.close()


def start(rig: Rig) -> CoordinatorClient:
    """The cluster, with the rebalancer off: these tests move shards by hand
    and check where they end up (the rebalancer would move some back to
    even the load: tests/test_rebalance_system.py)."""
    client = rig.start()
    out = subprocess.run([sys.executable, "-m", "coordinator.cli", "rebalance", "off", "--coordinators",
                          rig.cluster.addresses], capture_output=True, text=True, env=rig.cluster.env, timeout=60)
    assert out.returncode == 0 and "rebalancer off" in out.stdout, out.stdout + out.stderr
    return client


def move(rig: Rig, shard: int, source: str, target: str, *extra: str,
         wait: bool = True) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "coordinator.cli", "shard", "move", str(shard), source, target,
           "--coordinators", rig.cluster.addresses, *extra]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=rig.cluster.env)
    return subprocess.run(cmd, capture_output=True, text=True, env=rig.cluster.env, timeout=120)


def group(rig: Rig, rid: str, shard: int) -> tuple[list[str], str]:
    """The shard's group and move as replica *rid* reports them (ClusterInfo)."""
    from hsm.v1 import coordinator_pb2 as C
    from hsm.v1 import coordinator_pb2_grpc

    with rig.cluster.channel(rig.cluster.spec(rid).api) as ch:
        info = coordinator_pb2_grpc.CoordinatorStub(ch).ClusterInfo(C.ClusterInfoRequest(), timeout=5)
    row = next(r for r in info.shards if r.shard == shard)
    return list(row.members), row.move


def files_on(rig: Rig, shard: int, n: int, size: int = 4 * KiB, prefix: str = "f") -> list[tuple[Path, Fid, bytes]]:
    """*n* files whose FIDs the ring puts on *shard*."""
    from hsm.ring import Ring

    ring = Ring(SHARDS)
    out: list[tuple[Path, Fid, bytes]] = []
    k = 0
    while len(out) < n:
        f = rig.file(f"{prefix}{k}", size)
        k += 1
        if ring.shard_of(f[1]) == shard:
            out.append(f)
        else:
            f[0].unlink()
    return out


def all_archived(rig: Rig, files: list[tuple[Path, Fid, bytes]]) -> bool:
    return all(rig.fs.hsm_state(p).flags & HS.ARCHIVED for p, _f, _d in files)


def check_moved(rig: Rig, shard: int, source: str, target: str, before: tuple[str, ...]) -> None:
    """Every live replica reports the group with *target* in *source*'s place;
    the target holds the shard (journal, Raft port), the source does not."""
    after = [target if m == source else m for m in before]
    live = [s.id for s in rig.cluster.live()]
    until(lambda: all(group(rig, rid, shard) == (after, "") for rid in live), 30,
          lambda: f"every replica to report the group {after}: " + repr({r: group(rig, r, shard) for r in live}))
    src, dst = rig.cluster.spec(source), rig.cluster.spec(target)
    if source in live:
        assert sorted(p.name for p in (rig.tmp / "data" / source / f"shard-{shard}").iterdir()) == ["group", "lock"]
        assert not listening(int(src.raft_addr(shard).rsplit(":", 1)[1]))
    assert any(p.name.startswith("journal-") for p in (rig.tmp / "data" / target / f"shard-{shard}").iterdir())
    assert listening(int(dst.raft_addr(shard).rsplit(":", 1)[1]))


def test_a_shard_moves_under_a_flood_with_nothing_lost_or_run_twice(rig: Rig) -> None:
    client = start(rig)
    c = rig.cluster
    before = c.placement[0]
    source = before[0]  # the preferred leader: the move hands the leadership over first
    target = next(s.id for s in c.specs if s.id not in before)
    until(lambda: c.leaders(source).get(0) == source, 30, f"{source} leading shard 0")
    rig.agent("a1", slots="archive=8,restore=2,remove=1", bandwidth="16M")
    rig.agent("a2", slots="archive=8,restore=2,remove=1", bandwidth="16M")
    files = files_on(rig, 0, 150)
    acks: list[float] = []
    ids: list[int] = []
    stop = threading.Event()

    def flood() -> None:
        with CoordinatorClient(c.addresses, timeout=30, initiator="flood", tls=c.client_tls) as fc:
            for k in range(0, len(files), 5):
                batch = [fc.submit_item("fs1", f, "archive") for _p, f, _d in files[k:k + 5]]
                results = fc.submit(batch)
                assert all(r.outcome in (1, 2) for r in results), results
                ids.extend(r.action_id for r in results)
                acks.append(time.monotonic())
                time.sleep(0.05)
                if stop.is_set():
                    return

    t = threading.Thread(target=flood)
    t.start()
    try:
        until(lambda: len(acks) >= 5, 30, "the flood under way")
        out = move(rig, 0, source, target, "--wait", "--timeout", "90")
        assert isinstance(out, subprocess.CompletedProcess)
        assert out.returncode == 0, out.stderr
        assert f"shard 0: moving {source} -> {target} (joining)" in out.stdout
        assert f"shard 0: moved; group {', '.join(target if m == source else m for m in before)}" in out.stdout
        # the sample in docs/scale-out.md: its first and last lines are these (the phases between
        # are printed as the command sees them, polling)
        sample = shape(block_after("What the command prints with `--wait`", DOC))
        got = shape(out.stdout)
        assert (sample[0], sample[-1]) == (got[0], got[-1]), (sample, got)
    finally:
        t.join(120)
        stop.set()
    assert len(ids) == len(files) and len(set(ids)) == len(files), "every submit answered, one action each"
    gaps = [b - a for a, b in zip(acks, acks[1:], strict=False)]
    print(f"longest pause between two acknowledged batches of shard 0: {max(gaps):.2f} s")
    check_moved(rig, 0, source, target, before)
    until(lambda: all_archived(rig, files), 90, "every file archived")
    rig.check_archived(files)
    assert client is not None
    ends = client.wait(ids, deadline=30)
    assert all(a.state == T.SUCCEEDED for a in ends.values()) and len(ends) == len(files)
    # the status through the replica that left shows the new group
    st = rig.hsmctl("status", "--coordinators", c.spec(source).api)
    assert st.returncode == 0 and ",".join(target if m == source else m for m in before) in st.stdout
    rig.check_no_double_runs()


def test_a_move_already_done_or_that_makes_no_sense_is_refused_and_changes_nothing(rig: Rig) -> None:
    start(rig)
    c = rig.cluster
    before = list(c.placement[1])
    outsider = next(s.id for s in c.specs if s.id not in before)
    for args, words in (((1, outsider, before[0]), f"{outsider} is not a member of the shard's group"),
                        ((1, before[0], before[1]), f"{before[1]} is a member of the shard's group already"),
                        ((1, before[0], "nobody"), "no replica 'nobody' in the cluster"),
                        ((9, before[0], outsider), "no shard 9"),
                        ((1, before[0], before[0]), "the same replica")):
        out = move(rig, *args)  # type: ignore[arg-type]
        assert isinstance(out, subprocess.CompletedProcess)
        assert out.returncode == 1 and words in out.stderr, (args, out.stderr)
    assert all(group(rig, s.id, 1) == (before, "") for s in c.specs)


def preload(rig: Rig, shard: int, n: int) -> tuple[list[tuple[Path, Fid, bytes]], list[int]]:
    """*n* archives on *shard*, waiting (dispatch held): a log for a joining member to catch up."""
    out = rig.hsmctl("control", "disabled")
    assert out.returncode == 0, out.stderr
    files = files_on(rig, shard, n, size=1024, prefix=f"p{shard}-")
    ids = rig.submit("archive", [f for _p, f, _d in files])
    return files, ids


def finish(rig: Rig, files: list[tuple[Path, Fid, bytes]], ids: list[int]) -> None:
    out = rig.hsmctl("control", "enabled")
    assert out.returncode == 0, out.stderr
    until(lambda: all_archived(rig, files), 120, "every file archived")
    assert rig.client is not None
    ends = rig.client.wait(ids, deadline=60)
    assert len(ends) == len(ids) and all(a.state == T.SUCCEEDED for a in ends.values())
    rig.check_no_double_runs()


def test_kill_9_of_the_joining_replica_mid_move_and_the_move_completes_when_it_is_back(rig: Rig) -> None:
    start(rig)
    c = rig.cluster
    before = c.placement[2]
    source, target = before[1], next(s.id for s in c.specs if s.id not in before)
    files, ids = preload(rig, 2, 400)
    rig.agent("a1", slots="archive=8,restore=2,remove=1", bandwidth="16M")
    proc = move(rig, 2, source, target, wait=False)
    journal = rig.tmp / "data" / target / "shard-2"
    until(lambda: journal.exists() and any(p.name.startswith("journal-") for p in journal.iterdir()), 30,
          "the target joined the group")
    c.kill(target)
    assert isinstance(proc, subprocess.Popen)
    assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""  # begun; the leader drives it on
    c.start(target)
    c.wait_ready()
    check_moved(rig, 2, source, target, before)
    finish(rig, files, ids)


def test_kill_9_of_the_leader_mid_move_a_new_leader_finishes_it_and_the_old_one_closes_its_member(
        rig: Rig) -> None:
    start(rig)
    c = rig.cluster
    before = c.placement[0]
    source, target = before[0], next(s.id for s in c.specs if s.id not in before)
    until(lambda: c.leaders(before[1]).get(0) == source, 30, f"{source} leading shard 0")
    files, ids = preload(rig, 0, 400)
    rig.agent("a1", slots="archive=8,restore=2,remove=1", bandwidth="16M")
    proc = move(rig, 0, source, target, wait=False)
    journal = rig.tmp / "data" / target / "shard-0"
    until(lambda: journal.exists() and any(p.name.startswith("journal-") for p in journal.iterdir()), 30,
          "the target joined the group")
    c.kill(source)  # the leader, and the member the move removes
    assert isinstance(proc, subprocess.Popen)
    proc.wait(30)
    check_moved(rig, 0, source, target, before)
    # the old leader comes back: it asks the group, finds itself out, and closes its member
    c.start(source)
    c.wait_ready()
    check_moved(rig, 0, source, target, before)
    finish(rig, files, ids)


def test_every_replica_killed_mid_move_and_started_again_the_move_resumes(rig: Rig) -> None:
    start(rig)
    c = rig.cluster
    before = c.placement[3]
    source, target = before[2], next(s.id for s in c.specs if s.id not in before)
    files, ids = preload(rig, 3, 400)
    rig.agent("a1", slots="archive=8,restore=2,remove=1", bandwidth="16M")
    proc = move(rig, 3, source, target, wait=False)
    journal = rig.tmp / "data" / target / "shard-3"
    until(lambda: journal.exists(), 30, "the target joined the group")
    for s in list(c.live()):
        c.kill(s.id)
    assert isinstance(proc, subprocess.Popen)
    proc.wait(60)
    c.start_all()
    check_moved(rig, 3, source, target, before)
    finish(rig, files, ids)
