"""Placement of the shards' Raft groups over the replicas (issue 19): the
pure spread, the checks of a given placement, and how the configuration
and ``hsm-coordinator init`` read and write it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from coordinator import config as cfgmod
from coordinator import placement as placing
from coordinator.cli import main as coordinator_main
from coordinator.cluster import ClusterSpec, ReplicaSpec


def ids(n: int) -> list[str]:
    return [f"hsm-{k}" for k in range(n)]


@given(n=st.integers(1, 12), shards=st.integers(1, 60), r=st.sampled_from(placing.GROUP_SIZES))
def test_spread_gives_every_shard_r_distinct_members_and_balances_holdings_and_leaders(
        n: int, shards: int, r: int) -> None:
    if r > n:
        with pytest.raises(ValueError, match="replication"):
            placing.spread(ids(n), shards, r)
        return
    p = placing.spread(ids(n), shards, r)
    assert placing.problems(p, ids(n), shards) == []
    assert all(len(set(m)) == r for m in p)
    load = placing.load(p, ids(n))
    held = [h for h, _ in load.values()]
    leads = [lead for _, lead in load.values()]
    assert sum(held) == shards * r and max(held) - min(held) <= 1
    # the issue: no replica leads much more than S/N
    assert max(leads) <= math.ceil(shards / n) and sum(leads) == shards


def test_spread_is_deterministic_and_the_first_member_leads_round_robin() -> None:
    a = placing.spread(ids(9), 18, 3)
    assert a == placing.spread(ids(9), 18, 3)
    assert [m[0] for m in a] == [f"hsm-{i % 9}" for i in range(18)]
    assert set(placing.load(a, ids(9)).values()) == {(6, 2)}  # 18 x 3 / 9 each, 2 leaders each
    assert placing.hosted(a, "hsm-0") == [i for i, m in enumerate(a) if "hsm-0" in m]


@pytest.mark.parametrize("placement, wrong", [
    ((("a", "b", "c"),), "the cluster has 2"),
    ((("a", "b"), ("a", "b")), "2 member(s)"),
    ((("a", "a", "b"), ("a", "b", "c")), "named twice"),
    ((("a", "b", "x"), ("a", "b", "c")), "x is not a replica"),
    ((("a",), ("a", "b", "c")), "the same size"),
])
def test_a_wrong_placement_is_refused_with_the_reason(placement: placing.Placement, wrong: str) -> None:
    assert any(wrong in p for p in placing.problems(placement, ["a", "b", "c", "d"], 2))


def spec(n: int = 4, shards: int = 4, placement: placing.Placement = ()) -> ClusterSpec:
    return ClusterSpec("c", shards, tuple(ReplicaSpec(r, f"127.0.0.1:{7600 + k}", f"127.0.0.1:{8000 + 10 * k}")
                                          for k, r in enumerate(ids(n))), "x" * 16, placement=placement)


def test_cluster_spec_members_hosted_and_preferred_leader_follow_the_placement() -> None:
    p = placing.spread(ids(4), 4, 3)
    s = spec(placement=p)
    assert s.replication == 3
    for i in range(4):
        assert [r.id for r in s.members(i)] == list(p[i])
        assert s.preferred_leader(i).id == p[i][0]
    assert s.hosted("hsm-0") == [i for i in range(4) if "hsm-0" in p[i]]
    assert len(s.hosted("hsm-0")) == 3
    # without a placement every replica holds every shard, leaders round-robin (as before placements)
    everywhere = spec()
    assert everywhere.replication == 4 and everywhere.hosted("hsm-3") == [0, 1, 2, 3]
    assert [everywhere.preferred_leader(i).id for i in range(4)] == ids(4)
    with pytest.raises(ValueError, match="placement: shard 0: x is not a replica"):
        spec(placement=(("x", "hsm-1", "hsm-2"),) + p[1:])


def write(tmp: Path, cluster_extra: str) -> Path:
    (tmp / "pw").write_text("p" * 20 + "\n")
    (tmp / "pw").chmod(0o600)
    reps = "".join(f"    - {{id: {r}, api: '127.0.0.1:{7600 + k}', raft: '127.0.0.1:{8000 + 10 * k}'}}\n"
                   for k, r in enumerate(ids(4)))
    path = tmp / "c.yaml"
    path.write_text(f"cluster:\n  shards: 4\n  password_file: {tmp / 'pw'}\n  replicas:\n{reps}{cluster_extra}"
                    f"data_dir: {tmp / 'data'}\ninsecure: true\nreplica_id: hsm-0\n")
    return path


def test_config_replication_spreads_and_placement_is_read_as_given(tmp_path: Path) -> None:
    cfg, _ = cfgmod.load(write(tmp_path, "  replication: 3\n"))
    assert cfg.cluster.placement == placing.spread(ids(4), 4, 3)
    given_p = "  placement:\n" + "".join(f"    {i}: [hsm-{(i + 1) % 4}, hsm-{(i + 2) % 4}, hsm-{(i + 3) % 4}]\n"
                                         for i in range(4))
    cfg, _ = cfgmod.load(write(tmp_path, given_p))
    assert cfg.cluster.placement[0] == ("hsm-1", "hsm-2", "hsm-3")
    assert cfg.cluster.hosted("hsm-0") == [1, 2, 3]
    cfg, _ = cfgmod.load(write(tmp_path, ""))
    assert cfg.cluster.placement == () and cfg.cluster.hosted("hsm-0") == [0, 1, 2, 3]


@pytest.mark.parametrize("extra, message", [
    ("  replication: 2\n", "cluster.replication: 2: a shard's group has 1, 3, 5 or 7 members"),
    ("  replication: 5\n", "at most the 4 replica(s)"),
    ("  replication: three\n", "cluster.replication"),
    ("  placement: {0: [hsm-0, hsm-1, hsm-2]}\n", "every shard 0..3 once; missing 1, 2, 3"),
    ("  placement: {0: [hsm-0, hsm-1, hsm-9], 1: [hsm-0, hsm-1, hsm-2], 2: [hsm-0, hsm-1, hsm-2], "
     "3: [hsm-0, hsm-1, hsm-2]}\n", "shard 0: hsm-9 is not a replica of the cluster"),
    ("  placement: {0: hsm-0, 1: [hsm-0], 2: [hsm-1], 3: [hsm-2]}\n", "shard 0: expected a list of replica ids"),
    ("  replication: 1\n  placement: {0: [hsm-0, hsm-1, hsm-2], 1: [hsm-0, hsm-1, hsm-2], "
     "2: [hsm-0, hsm-1, hsm-2], 3: [hsm-0, hsm-1, hsm-2]}\n", "replication is 1 but the placement's groups have 3"),
])
def test_a_wrong_replication_or_placement_stops_the_replica_with_the_reason(
        tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(cfgmod.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cfgmod.load(write(tmp_path, extra))


def test_init_with_replication_writes_the_placement_out_one_line_per_shard(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["init", "--insecure", "--shards", "6", "--replication", "3", "--out", str(tmp_path / "etc")]
    for k in range(4):
        args += ["--replica", f"hsm-{k}=127.0.0.1:{7600 + k}:{8000 + 10 * k}"]
    assert coordinator_main(args) == 0
    out = capsys.readouterr().out
    assert "(4 replicas, 6 shards, each in a group of 3," in out
    text = (tmp_path / "etc" / "coordinator.yaml").read_text()
    assert "  replication: 3\n" in text
    first = placing.spread(ids(4), 6, 3)[0]
    assert f"    0: [{', '.join(first)}]\n" in text and first[0] == "hsm-0"
    cfg, _ = cfgmod.load(tmp_path / "etc" / "coordinator.yaml", {"replica_id": "hsm-3"})
    assert cfg.cluster.placement == placing.spread(ids(4), 6, 3)
    # written out: the placement does not depend on the replica list any more
    assert "placement:" in text
    bad = ["init", "--insecure", "--replication", "5", "--out", str(tmp_path / "etc2")]
    bad += ["--replica", "a=127.0.0.1:1:2"]
    assert coordinator_main(bad) == 2
    assert "at most the 1 replica(s)" in capsys.readouterr().err
    assert not (tmp_path / "etc2" / "coordinator.yaml").exists()


def apply(groups: list[list[str]], step: placing.Step) -> None:
    g = groups[step.shard]
    assert step.target not in g or step.kind == "lead", "a move to a member of the group"
    assert step.source in g
    if step.kind == "move":
        g[g.index(step.source)] = step.target
    else:
        g.remove(step.target)
        g.insert(0, step.target)


@given(n=st.integers(3, 10), added=st.integers(0, 4), shards=st.integers(1, 30), r=st.sampled_from((1, 3)),
       drained=st.integers(0, 2))
@example(n=3, added=3, shards=6, r=3, drained=0)  # the fourth-to-sixth replicas' leads take a chain of two
def test_the_rebalancer_fills_added_replicas_empties_drained_ones_and_then_stops(
        n: int, added: int, shards: int, r: int, drained: int) -> None:
    """From a placement over the first n replicas, with *added* more replicas
    and the last *drained* of all drained: steps until none, never more than
    a bound; then every live replica holds and leads its share within one
    and the drained hold nothing."""
    replicas = ids(n + added)
    groups = [list(m) for m in placing.spread(replicas[:n], shards, r)]
    out = set(replicas[len(replicas) - drained:]) if drained and len(replicas) - drained >= r else set()
    for _ in range(4 * shards * r + 2 * shards + 10):
        step = placing.next_step(groups, replicas, out)
        if step is None:
            break
        apply(groups, step)
    else:
        raise AssertionError("the rebalancer did not stop")
    assert placing.problems([tuple(g) for g in groups], replicas, shards) == []
    live = [x for x in replicas if x not in out]
    held = {x: sum(x in g for g in groups) for x in replicas}
    leads = {x: sum(g[0] == x for g in groups) for x in replicas}
    assert all(held[x] == 0 for x in out)
    assert max(held[x] for x in live) - min(held[x] for x in live) <= 1
    assert max(leads[x] for x in live) - min(leads[x] for x in live) <= 1


def test_the_rebalancer_moves_nothing_in_a_balanced_cluster_or_where_every_replica_holds_every_shard() -> None:
    assert placing.next_step([list(m) for m in placing.spread(ids(9), 18, 3)], ids(9)) is None
    everywhere = [ids(3)[k:] + ids(3)[:k] for k in (i % 3 for i in range(8))]
    assert placing.next_step(everywhere, ids(3)) is None
    # a drained replica in a cluster where every replica holds every shard: nowhere to go
    assert placing.next_step(everywhere, ids(3), {"hsm-0"}) is None
