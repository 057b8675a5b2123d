"""Splitting shards while the cluster serves (issue 19, item 3), with real
replica processes, agentd processes and the posix mover:
``hsm-coordinator reshard --add N`` under a flood of archives; kill -9 of
shard 0's leader (the split's driver) mid-split; every replica killed
mid-split and started again. Each test ends with nothing lost (every
submit answered once, every action on the shard the new ring gives its
file, every file archived), nothing run twice (the agents' logs), and the
members of every group holding identical states."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hsm.client import CoordinatorClient
from hsm.fid import Fid
from hsm.ring import Ring
from hsm.v1 import coordinator_pb2 as C
from hsm.v1 import coordinator_pb2_grpc
from hsm.v1 import types_pb2 as T
from tests.cluster import until
from tests.readme import block_after, shape
from tests.test_system_agents import KiB, Rig

pytestmark = pytest.mark.slow  # real processes, seconds per test

SHARDS, ADDED = 2, 2
DOC = Path(__file__).resolve().parent.parent / "docs" / "resharding.md"
OLD, NEW = Ring(SHARDS), Ring(SHARDS).with_shard_added(ADDED)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    r = Rig(tmp_path, replicas=3, shards=SHARDS, raft_room=ADDED, agent_grace=3.0)
    try:
        yield r  # type: ignore[misc]
    finally:
        r.close()


def reshard(rig: Rig, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coordinator.cli", "reshard", *args, "--coordinators",
                           ",".join(s.api for s in rig.cluster.live())], capture_output=True, text=True,
                          env=rig.cluster.env, timeout=timeout)


def split_view(rig: Rig, rid: str) -> C.ReshardResponse:
    with rig.cluster.channel(rig.cluster.spec(rid).api) as ch:
        return coordinator_pb2_grpc.CoordinatorStub(ch).Reshard(C.ReshardRequest(), timeout=10)


def info(rig: Rig, rid: str) -> C.ClusterInfoResponse:
    with rig.cluster.channel(rig.cluster.spec(rid).api) as ch:
        return coordinator_pb2_grpc.CoordinatorStub(ch).ClusterInfo(C.ClusterInfoRequest(), timeout=10)


def files(rig: Rig, n: int, prefix: str = "f") -> list[tuple[Path, Fid, bytes]]:
    out = [rig.file(f"{prefix}{k}", 4 * KiB) for k in range(n)]
    moving = sum(OLD.shard_of(f) != NEW.shard_of(f) for _p, f, _d in out)
    assert n // 4 < moving < 3 * n // 4, f"{moving} of {n} files move: the ring changed?"
    return out


def where(rig: Rig, ids: list[int]) -> dict[int, tuple[int, str]]:
    """Each action's shard and state, from every shard's listing (each
    action must be listed by exactly one shard)."""
    assert rig.client is not None
    found: dict[int, tuple[int, str]] = {}
    for a in rig.client.list_actions(include_terminal=True):
        assert a.action_id not in found, f"action {a.action_id} listed twice"
        found[a.action_id] = (a.shard, T.ActionState.Name(a.state))
    return {i: found[i] for i in ids if i in found}


def check_split(rig: Rig, ids: list[int], fids: dict[int, Fid]) -> None:
    """Every replica routes by the new ring; every action is known once, on
    the shard the new ring gives its file; the groups converged."""
    c = rig.cluster
    live = [s.id for s in c.live()]
    until(lambda: all((i := info(rig, rid)).shard_count == SHARDS + ADDED and i.ring_version == 2 for rid in live),
          30, "every replica on the new ring")
    c.shards = SHARDS + ADDED
    got = where(rig, ids)
    assert sorted(got) == sorted(ids), f"{len(set(ids) - set(got))} action(s) lost"
    wrong = {i: got[i][0] for i in ids if got[i][0] != NEW.shard_of(fids[i])}
    assert not wrong, f"actions on a shard the new ring does not give their file: {wrong}"
    assert {got[i][0] for i in ids} >= set(range(SHARDS, SHARDS + ADDED)), "the new shards hold nothing"
    c.check_converged()


def test_a_split_under_a_flood_moves_files_whole_and_loses_or_doubles_nothing(rig: Rig) -> None:
    client = rig.start()
    c = rig.cluster
    rig.agent("a1", slots="archive=4,restore=2,remove=1", bandwidth="16M")
    rig.agent("a2", slots="archive=4,restore=2,remove=1", bandwidth="16M")
    fs = files(rig, 160)
    ids: list[int] = []
    fids: dict[int, Fid] = {}
    keys: list[tuple[str, int]] = []
    acks: list[float] = []
    errors: list[BaseException] = []

    def flood() -> None:
        try:
            with CoordinatorClient(c.addresses, timeout=30, initiator="flood", tls=c.client_tls) as fc:
                for k in range(0, len(fs), 4):
                    batch = [fc.submit_item("fs1", f, "archive") for _p, f, _d in fs[k:k + 4]]
                    results = fc.submit(batch)
                    assert all(r.outcome in (1, 2) for r in results), results
                    for it, r in zip(batch, results, strict=True):
                        ids.append(r.action_id)
                        fids[r.action_id] = Fid(it.fid.seq, it.fid.oid, it.fid.ver)
                        keys.append((it.idempotency_key, r.action_id))
                    acks.append(time.monotonic())
                    time.sleep(0.05)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    t = threading.Thread(target=flood)
    t.start()
    try:
        until(lambda: len(acks) >= 5 or errors, 30, "the flood under way")
        out = reshard(rig, "--add", str(ADDED), "--wait", "--timeout", "150")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "split 2 -> 4 shards (ring version 2): opening" in out.stdout, out.stdout
        assert out.stdout.rstrip().endswith("ring: 4 shards, version 2; split 2 -> 4 shards (ring version 2): done"), \
            out.stdout
        # the sample in docs/resharding.md: its first and last lines are these (the phases between
        # are printed as the command sees them, polling)
        print(out.stdout)
        sample = shape(block_after("What `reshard --add N --wait` prints", DOC))
        got = shape(out.stdout)
        assert (sample[0], sample[-1]) == (got[0], got[-1]), (sample, got)
    finally:
        t.join(180)
    assert not errors, errors
    assert len(ids) == len(fs) and len(set(ids)) == len(fs), "every submit answered, one action each"
    gaps = [b - a for a, b in zip(acks, acks[1:], strict=False)]
    print(f"longest pause between two acknowledged batches: {max(gaps):.2f} s")
    check_split(rig, ids, fids)
    # a retried submit (same idempotency key) gets its first answer, wherever its file went
    again = client.submit([client.submit_item("fs1", fids[i], "archive", idempotency_key=key) for key, i in keys])
    assert [r.action_id for r in again] == [i for _k, i in keys]
    until(lambda: all(client.get_action(i).state == T.SUCCEEDED for i in ids), 120, "every archive done")
    rig.check_archived(fs)
    rig.check_no_double_runs()
    # the cluster still takes work for files of every shard
    more = files(rig, 40, prefix="g")
    later = rig.submit("archive", [f for _p, f, _d in more])
    until(lambda: all(client.get_action(i).state == T.SUCCEEDED for i in later), 60, "the later archives done")
    assert {i % 1000 for i in later} == set(range(SHARDS + ADDED))


def test_a_split_refuses_what_makes_no_sense_and_changes_nothing(rig: Rig) -> None:
    rig.start()
    out = reshard(rig)
    assert out.returncode == 0 and out.stdout.strip() == "ring: 2 shards, version 1; no split ever ran", out.stdout
    out = reshard(rig, "--abort")
    assert out.returncode == 1 and "no split runs" in out.stderr
    out = reshard(rig, "--add", "3")  # the Raft ports leave room for 2 more shards only
    assert out.returncode == 1 and "Raft port" in out.stderr and "at least 5 apart" in out.stderr, out.stderr
    assert info(rig, "r1").shard_count == SHARDS and info(rig, "r1").ring_version == 1


def draining(rig: Rig) -> tuple[list[int], dict[int, Fid]]:
    """A split held in its drain: agent a1 copies archives slowly (128 KiB
    files at 16 KiB/s: 8 s each, 4 at a time) when the split freezes, two
    of them of moving files; returns once the driver says it waits for
    them, seconds before they end. 12 more archives wait behind."""
    c = rig.cluster
    rig.agent("a1", slots="archive=4,restore=2,remove=1", bandwidth="16K")
    fs = [rig.file(f"f{k}", 128 * KiB) for k in range(16)]
    moving = [f for _p, f, _d in fs if OLD.shard_of(f) != NEW.shard_of(f)]
    staying = [f for _p, f, _d in fs if OLD.shard_of(f) == NEW.shard_of(f)]
    assert len(moving) >= 2 and staying
    first = rig.submit("archive", moving[:2])
    assert rig.client is not None
    until(lambda: all(rig.client.get_action(i).state == T.STARTED for i in first), 30,  # type: ignore[union-attr]
          "archives of moving files copying")
    ids = first + rig.submit("archive", [f for f in moving[2:] + staying])
    fids = {i: f for i, f in zip(ids, moving + staying, strict=True)}
    out = reshard(rig, "--add", str(ADDED))
    assert out.returncode == 0 and "opening" in out.stdout, out.stdout + out.stderr
    until(lambda: split_view(rig, c.leader_of(0)).waiting.startswith("draining: "), 30, "the split draining")
    return ids, fids


def all_done(rig: Rig, ids: list[int], timeout: float = 120) -> None:
    def states() -> str:
        got = where(rig, ids)
        counts: dict[tuple[int, str], int] = {}
        for shard_state in got.values():
            counts[shard_state] = counts.get(shard_state, 0) + 1
        stuck = [(i, shard, state) for i, (shard, state) in got.items() if state != "SUCCEEDED"][:10]
        return f"every archive done: (shard, state) -> count {sorted(counts.items())}; e.g. {stuck}"

    until(lambda: all(state == "SUCCEEDED" for _s, state in where(rig, ids).values()), timeout, states, interval=0.5)


def test_kill_9_of_the_driver_mid_split_a_new_leader_of_shard_0_finishes_it(rig: Rig) -> None:
    rig.start()
    c = rig.cluster
    driver = c.leader_of(0)
    ids, fids = draining(rig)
    c.kill(driver)
    out = reshard(rig, "--wait", "--timeout", "90")
    assert out.returncode == 0 and out.stdout.rstrip().endswith("done"), out.stdout + out.stderr
    assert c.leader_of(0) != driver
    check_split(rig, ids, fids)
    # the killed replica comes back: it opens the new shards it holds and takes the new ring
    c.start(driver)
    c.wait_ready()
    check_split(rig, ids, fids)
    assert (c.tmp / "data" / driver / "shard-3" / "group").exists()
    all_done(rig, ids)
    rig.check_no_double_runs()


def test_every_replica_killed_mid_split_and_started_again_the_split_resumes(rig: Rig) -> None:
    rig.start()
    c = rig.cluster
    ids, fids = draining(rig)
    for s in list(c.live()):
        c.kill(s.id)
    for s in c.specs:
        c.start(s.id)
    c.wait_ready(60)
    out = reshard(rig, "--wait", "--timeout", "120")
    assert out.returncode == 0 and out.stdout.rstrip().endswith("done"), out.stdout + out.stderr
    check_split(rig, ids, fids)
    # and once more after the split: the ring is read back from each replica's data directory
    for s in list(c.live()):
        c.kill(s.id)
    for s in c.specs:
        c.start(s.id)
    c.wait_ready(60)
    check_split(rig, ids, fids)
    all_done(rig, ids)
    rig.check_no_double_runs()


def test_a_split_aborted_mid_drain_leaves_every_file_where_it_was_and_a_later_split_works(rig: Rig) -> None:
    rig.start()
    c = rig.cluster
    ids, fids = draining(rig)
    out = reshard(rig, "--abort", "--wait", "--timeout", "60")
    assert out.returncode == 0 and out.stdout.rstrip().endswith("aborted"), out.stdout + out.stderr
    for s in c.live():
        i = info(rig, s.id)
        assert (i.shard_count, i.ring_version) == (SHARDS, 1)
        for k in (2, 3):  # each replica closed its members of the new shards: their journals are gone
            left = sorted(p.name for p in (c.tmp / "data" / s.id / f"shard-{k}").iterdir())
            assert left == ["group", "lock"], (s.id, k, left)
    got = where(rig, ids)
    assert sorted(got) == sorted(ids)
    assert all(got[i][0] == OLD.shard_of(fids[i]) for i in ids), "an action left its shard"
    all_done(rig, ids)
    rig.check_no_double_runs()
    # the ring is as it was: a split asked again runs from the start, to the same version
    out = reshard(rig, "--add", str(ADDED), "--wait", "--timeout", "90")
    assert out.returncode == 0 and out.stdout.rstrip().endswith("done"), out.stdout + out.stderr
    check_split(rig, ids, fids)


def test_a_split_of_a_cluster_whose_shards_live_on_some_replicas_places_the_new_groups_too(tmp_path: Path) -> None:
    """4 replicas, groups of 3: the new shards' groups are spread like the
    configured ones, each replica opens only the new groups it is in, and
    every replica (a member or not) routes by the new ring."""
    r = Rig(tmp_path, replicas=4, shards=SHARDS, replication=3, raft_room=ADDED, agent_grace=3.0)
    try:
        client = r.start()
        c = r.cluster
        subprocess.run([sys.executable, "-m", "coordinator.cli", "rebalance", "off", "--coordinators", c.addresses],
                       check=True, capture_output=True, env=c.env, timeout=60)
        ids, fids = submit_waiting(r, 80)
        out = reshard(r, "--add", str(ADDED), "--wait", "--timeout", "120")
        assert out.returncode == 0 and out.stdout.rstrip().endswith("done"), out.stdout + out.stderr
        check_split(r, ids, fids)
        groups = {row.shard: list(row.members) for row in info(r, "r1").shards}
        for k in (2, 3):
            assert len(groups[k]) == 3, groups
            for s in c.specs:  # a replica holds a new shard exactly when its group names it
                held = (c.tmp / "data" / s.id / f"shard-{k}" / "group").exists()
                assert held == (s.id in groups[k]), (s.id, k, groups[k])
        # every replica answers for every action, whichever shard holds it now
        for s in c.specs:
            with CoordinatorClient(s.api, timeout=20, tls=c.client_tls) as one:
                assert {one.get_action(i).action_id for i in ids} == set(ids)
        r.agent("a1", slots="archive=8,restore=2,remove=1", bandwidth="16M")
        all_done(r, ids)
        r.check_no_double_runs()
        assert client is not None
    finally:
        r.close()


def submit_waiting(rig: Rig, n: int) -> tuple[list[int], dict[int, Fid]]:
    """*n* archives that wait (no agent yet)."""
    fs = files(rig, n)
    ids = rig.submit("archive", [f for _p, f, _d in fs])
    return ids, {i: f for i, (_p, f, _d) in zip(ids, fs, strict=True)}
