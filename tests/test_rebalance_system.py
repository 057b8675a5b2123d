"""The rebalancer and replica drain (issue 19, item 2), with real replica
processes and agents: a fourth replica that holds no shard (the placement
names only the first three, as after adding a machine) is filled by the
rebalancer on shard 0's leader until every replica holds and leads its
share, while archives keep flowing; then ``hsm-coordinator replica drain``
moves every shard off it again. Nothing lost, nothing run twice, and the
members of every group hold identical states."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from coordinator import placement as placing
from hsm.hsmflags import HS
from hsm.v1 import types_pb2 as T
from tests.cluster import until
from tests.readme import block_after, shape
from tests.test_system_agents import KiB, Rig

pytestmark = pytest.mark.slow  # real processes, seconds per test

SHARDS = 4
DOC = Path(__file__).resolve().parent.parent / "docs" / "scale-out.md"


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    r = Rig(tmp_path, replicas=4, shards=SHARDS, replication=3, agent_grace=3.0)
    # as if r4 had just been added: the placement names the first three only
    doc = yaml.safe_load(r.cluster.config.read_text())
    first = [s.id for s in r.cluster.specs[:3]]
    doc["cluster"]["placement"] = {i: list(m) for i, m in enumerate(placing.spread(first, SHARDS, 3))}
    r.cluster.config.write_text(yaml.safe_dump(doc))
    r.cluster.placement = placing.spread(first, SHARDS, 3)
    try:
        yield r  # type: ignore[misc]
    finally:
        r.close()


def admin(rig: Rig, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coordinator.cli", *args, "--coordinators", rig.cluster.addresses],
                          capture_output=True, text=True, env=rig.cluster.env, timeout=300)


def loads(rig: Rig) -> dict[str, tuple[int, int]]:
    out = rig.hsmctl("status", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    held: dict[str, tuple[int, int]] = {s.id: (0, 0) for s in rig.cluster.specs}
    for row in doc["shards"]:
        for k, m in enumerate(row["members"]):
            h, lead = held[m]
            held[m] = (h + 1, lead + (k == 0))
    return held


def test_the_rebalancer_fills_a_new_replica_and_a_drain_empties_it_under_a_flood(rig: Rig) -> None:
    client = rig.start()
    c = rig.cluster
    r4 = c.specs[3].id
    rig.agent("a1", slots="archive=8,restore=2,remove=1", bandwidth="16M")
    files = [rig.file(f"f{i}", 4 * KiB) for i in range(120)]
    ids = rig.submit("archive", [f for _p, f, _d in files[:60]])
    # filled: 4 shards x 3 members over 4 replicas is 3 each, and every replica leads one
    until(lambda: loads(rig) == {s.id: (3, 1) for s in c.specs}, 120, lambda: f"balanced: {loads(rig)}")
    out = admin(rig, "rebalance")
    assert out.returncode == 0, out.stderr
    assert "rebalancer on; drained: none" in out.stdout and "next: balanced" in out.stdout
    assert any(line.split() == [r4, "3", "1"] for line in out.stdout.splitlines()), out.stdout
    # the sample in docs/scale-out.md is this output
    sample = shape(block_after("`rebalance` prints", DOC))
    assert sample == shape(out.stdout), (sample, out.stdout)
    ids += rig.submit("archive", [f for _p, f, _d in files[60:]])
    # drained: every shard moves off r4, the others share them again
    out = admin(rig, "replica", "drain", r4, "--wait", "--timeout", "120")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"replica {r4} holds no shard: it can be stopped" in out.stdout
    held = loads(rig)
    assert held[r4] == (0, 0) and all(held[s.id][0] == 4 for s in c.specs[:3])
    assert sorted(p.name for p in (rig.tmp / "data" / r4 / "shard-0").iterdir()) in (["group", "lock"], [])
    until(lambda: all(rig.fs.hsm_state(p).flags & HS.ARCHIVED for p, _f, _d in files), 90, "every file archived")
    assert client is not None
    ends = client.wait(ids, deadline=60)
    assert len(ends) == len(files) and all(a.state == T.SUCCEEDED for a in ends.values())
    rig.check_no_double_runs()
    # undrain and switch off: nothing moves while the rebalancer is off
    out = admin(rig, "rebalance", "off")
    assert out.returncode == 0 and "rebalancer off" in out.stdout
    out = admin(rig, "replica", "undrain", r4)
    assert out.returncode == 0 and "(the rebalancer is off)" in out.stdout, out.stdout
    assert loads(rig)[r4] == (0, 0)


def test_a_drain_or_rebalance_request_that_makes_no_sense_is_refused(rig: Rig) -> None:
    rig.start()
    out = admin(rig, "replica", "drain", "nobody")
    assert out.returncode == 1 and "no replica 'nobody' in the cluster" in out.stderr


def test_the_rebalancer_moves_nothing_to_a_replica_that_does_not_answer_and_fills_it_once_it_does(rig: Rig) -> None:
    c = rig.cluster
    r4 = c.specs[3].id
    for s in c.specs[:3]:
        c.start(s.id)
    c.wait_ready()
    logs = [c.logs / f"{s.id}.log" for s in c.specs[:3]]
    until(lambda: any(f"rebalancer: replica {r4} does not answer" in p.read_text() for p in logs), 60,
          "the rebalancer to find r4 silent")
    held = loads(rig)
    assert held[r4] == (0, 0) and all(held[s.id] == (4, held[s.id][1]) for s in c.specs[:3])
    assert not any("moving shard" in p.read_text() for p in logs), "no move was begun towards a silent replica"
    c.start(r4)
    c.wait_ready()
    until(lambda: loads(rig) == {s.id: (3, 1) for s in c.specs}, 120, lambda: f"balanced: {loads(rig)}")
    c.check_converged()


def test_a_dead_replica_is_drained_its_members_rebuilt_on_the_others_and_nothing_lost(rig: Rig) -> None:
    """Replacing a failed machine in a placed cluster: its shards' members
    move to the live replicas though it cannot go quiet or close anything."""
    client = rig.start()
    c = rig.cluster
    until(lambda: loads(rig) == {s.id: (3, 1) for s in c.specs}, 120, lambda: f"balanced: {loads(rig)}")
    rig.agent("a1", slots="archive=8,restore=2,remove=1", bandwidth="16M")
    dead = c.specs[1].id
    c.kill(dead)
    files = [rig.file(f"f{i}", 4 * KiB) for i in range(60)]
    ids = rig.submit("archive", [f for _p, f, _d in files])
    live = ",".join(s.api for s in c.live())
    out = subprocess.run([sys.executable, "-m", "coordinator.cli", "replica", "drain", dead, "--wait", "--timeout",
                          "180", "--coordinators", live], capture_output=True, text=True, env=c.env, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    held = {k: v for k, v in loads(rig).items() if k != dead}
    assert all(h == 4 for h, _lead in held.values()), held  # 4 shards x 3 members over the 3 live replicas
    until(lambda: all(rig.fs.hsm_state(p).flags & HS.ARCHIVED for p, _f, _d in files), 90, "every file archived")
    assert client is not None
    ends = client.wait(ids, deadline=60)
    assert len(ends) == len(files) and all(a.state == T.SUCCEEDED for a in ends.values())
    rig.check_no_double_runs()
