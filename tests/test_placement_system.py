"""Shards placed over more replicas than a shard's group has (issue 19,
placement), with real replica processes, agentd processes and the posix
mover: 4 replicas, 4 shards, groups of 3. Each replica opens the Raft
groups of its shards only (journals, Raft ports), learns the leaders of the
others from their members, and still serves the whole cluster: hsmctl and
the agents talk to any replica. kill -9 of a replica loses nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hsm.hsmflags import HS
from hsm.v1 import types_pb2 as T
from tests.cluster import listening, until
from tests.test_system_agents import KiB, Rig

pytestmark = pytest.mark.slow  # real processes, seconds per test

SHARDS = 4


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    r = Rig(tmp_path, replicas=4, shards=SHARDS, replication=3, agent_grace=3.0)
    try:
        yield r  # type: ignore[misc]
    finally:
        r.close()


def test_each_replica_holds_only_its_shards_and_any_replica_serves_the_whole_cluster(rig: Rig) -> None:
    client = rig.start()
    c = rig.cluster
    assert all(len(m) == 3 for m in c.placement) and len(c.placement) == SHARDS
    for spec in c.specs:
        held = [i for i in range(SHARDS) if c.holds(spec.id, i)]
        assert len(held) == 3
        journals = sorted(p.name for p in (rig.tmp / "data" / spec.id).iterdir() if p.name.startswith("shard-"))
        assert journals == [f"shard-{i}" for i in held], spec.id
        for i in range(SHARDS):
            assert listening(int(spec.raft_addr(i).rsplit(":", 1)[1])) == (i in held), (spec.id, i)
    # every replica knows every shard's leader, the one the placement prefers (the rebalancer's
    # work), also for the shards it does not hold: learned from their members
    preferred = {i: c.placement[i][0] for i in range(SHARDS)}
    until(lambda: all(c.leaders(s.id) == preferred for s in c.specs), 30, "the preferred leaders, known everywhere")

    rig.agent("a1", slots="archive=4,restore=4,remove=1", bandwidth="8M")
    rig.agent("a2", slots="archive=4,restore=4,remove=1", bandwidth="8M")
    files = [rig.file(f"f{i}", 64 * KiB) for i in range(24)]
    shards_used = {int(a) % 1000 for a in rig.submit("archive", [f for _, f, _ in files])}
    assert shards_used == set(range(SHARDS)), "the files span every shard"
    until(lambda: all(rig.fs.hsm_state(p).flags & HS.ARCHIVED for p, _f, _d in files), 60, "every file archived")
    rig.check_archived(files)

    # hsmctl status through each replica: the whole cluster's counts and every shard's group
    for spec in c.specs:
        out = rig.hsmctl("status", "--json", "--coordinators", spec.api)
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        done = sum(x["count"] for x in doc["counts"] if x["kind"] == "ARCHIVE" and x["state"] == "SUCCEEDED")
        assert done == 24, (spec.id, doc["counts"])
        rows = {s["shard"]: s for s in doc["shards"]}
        assert sorted(rows) == list(range(SHARDS))
        for i, row in rows.items():
            assert row["members"] == list(c.placement[i]) and row["leader"] == preferred[i]
            assert row["seen_by"] in c.placement[i], "a shard is reported by a member of its group"
    table = rig.hsmctl("status", "--coordinators", c.specs[-1].api)
    assert table.returncode == 0 and "GROUP" in table.stdout and ",".join(c.placement[0]) in table.stdout

    # kill -9 of the replica that leads shard 0: its shards elect among the other members,
    # the replicas that do not hold them learn the new leaders, and restores run everywhere
    victim = preferred[0]
    c.kill(victim)
    for path, _f, _d in files:
        rig.fs.release(path)
    live = [s for s in c.specs if s.id != victim]
    until(lambda: all(set(c.leaders(s.id).values()) <= {x.id for x in live} and "" not in c.leaders(s.id).values()
                      for s in live), 30, "a live leader of every shard, known to every live replica")
    ids = rig.submit("restore", [f for _, f, _ in files])
    assert client is not None
    ends = client.wait(ids, deadline=90)
    assert sorted(ends) == sorted(ids) and all(a.state == T.SUCCEEDED for a in ends.values())
    for path, _f, data in files:
        assert path.read_bytes() == data
    rig.check_no_double_runs()
