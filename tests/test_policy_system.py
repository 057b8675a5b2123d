"""The replicated policy on a real cluster (issue 16): ``hsmctl policy``
get, check, diff and set; a malformed document changes nothing; a change
lands mid-flood with nothing lost and applies on every replica; it survives
a leader kill and a restart of every replica."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hsm.client import CoordinatorClient, PermissionDenied, submit_item
from hsm.fid import Fid
from hsm.simfs import SimFS
from hsm.v1 import coordinator_pb2 as C
from hsm.v1 import coordinator_pb2_grpc
from hsm.v1 import types_pb2 as T
from tests.cluster import ProcCluster, no_concurrent_runs, until
from tests.test_system_cluster import NULL_AGENT, Load

pytestmark = pytest.mark.slow

BAD = """\
settings:
  max_attempts: 0
rules:
  - name: r
    match: {size: "> 1X"}
    then: {deny: nope}
"""

GOOD = """\
# site policy
settings:
  max_attempts: 5
fair_share: {by: user}
rules:
  - name: no-scratch
    match: {path: "/scratch/**"}
    then: {deny: "scratch is never archived"}
"""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcCluster]:
    c = ProcCluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()


def hsmctl(c: ProcCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hsmctl.cli", "--coordinators", c.addresses, *args],
                          capture_output=True, text=True, env=c.env, timeout=60)


def policies(c: ProcCluster) -> dict[str, tuple[int, str, tuple[int, ...]]]:
    """Per live replica: (version, text, each shard's version) as it sees them."""
    out = {}
    for s in c.live():
        with c.channel(s.api) as ch:
            r = coordinator_pb2_grpc.CoordinatorStub(ch).GetPolicy(C.GetPolicyRequest(), timeout=10)
        out[s.id] = (r.version, r.text, tuple(x.version for x in r.shards))
    return out


def everywhere(c: ProcCluster, version: int, text: str | None = None) -> bool:
    return all(v == version and shards == (version,) * c.shards and (text is None or t == text)
               for v, t, shards in policies(c).values())


def test_hsmctl_policy_get_check_diff_set(cluster: ProcCluster, tmp_path: Path) -> None:
    cluster.start_all()
    # version 1: each shard's first leader seeds it from its configuration
    until(lambda: everywhere(cluster, 1), 30, "the seeded policy on every shard of every replica")
    got = hsmctl(cluster, "policy", "get")
    assert got.returncode == 0, got.stderr
    assert got.stdout.startswith("# policy version 1, set ") and "max_attempts: 3" in got.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    for op in ("check", "set"):
        r = hsmctl(cluster, "policy", op, str(bad))
        assert r.returncode == 1, (op, r.stdout, r.stderr)
        lines = [x for x in r.stderr.splitlines() if x.startswith(f"{bad}:")]
        assert len(lines) == 2, r.stderr  # every error, each with its line
        assert lines[0].startswith(f"{bad}:2: settings.max_attempts: 0 is out of range 1..100")
        assert lines[1].startswith(f"{bad}:5: ")
    local = hsmctl(cluster, "policy", "check", "--local", str(bad))
    assert local.returncode == 1 and f"{bad}:2:" in local.stderr
    assert everywhere(cluster, 1)  # nothing changed

    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    r = hsmctl(cluster, "policy", "diff", str(good))
    assert r.returncode == 0, r.stderr
    assert "  settings.max_attempts: 3 -> 5" in r.stdout.splitlines()
    assert any("no-scratch" in x for x in r.stdout.splitlines())
    assert everywhere(cluster, 1)
    r = hsmctl(cluster, "policy", "set", "--expect-version", "7", str(good))
    assert r.returncode == 1 and "version 1, not 7" in r.stderr, r.stderr
    r = hsmctl(cluster, "policy", "set", str(good))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "policy version 2 set on every shard"
    until(lambda: everywhere(cluster, 2, GOOD), 15, "version 2 on every shard of every replica")
    got = hsmctl(cluster, "policy", "get")
    assert got.stdout.split("\n", 1)[1] == GOOD and " by admin (role admin)" in got.stdout.splitlines()[0]

    # it decides: a request on /scratch is refused with the rule's reason
    with CoordinatorClient(cluster.addresses, tls=cluster.client_tls) as client:
        res = client.submit([submit_item("sys", Fid(0x200000401, 1), "archive", path="/scratch/x/y"),
                             submit_item("sys", Fid(0x200000401, 2), "archive", path="/home/u/y")])
    assert (res[0].outcome, res[0].errno) == (C.REJECTED, 1)
    assert res[0].reason == "refused by policy rule 'no-scratch': scratch is never archived"
    assert res[1].outcome == C.CREATED

    # only an admin sets it
    operator = cluster.pki.issue("op", "operator")
    with CoordinatorClient(cluster.addresses, tls=operator) as client:
        assert client.get_policy().version == 2
        with pytest.raises(PermissionDenied):
            client.set_policy("settings: {max_attempts: 1}")
    cluster.check_converged()


def test_the_same_set_again_completes_a_set_that_failed_half_way(cluster: ProcCluster, tmp_path: Path) -> None:
    """A set that reached only some shards (here: version 2 on shard 0
    alone, what a shard without a leader leaves) is completed by the same
    set again: the same version everywhere, and it prints what the set
    changes, not "no change" (the client library retries that way by
    itself). Only once every shard has it does the same file make a new
    version, with no change in meaning."""
    cluster.start_all()
    until(lambda: everywhere(cluster, 1), 30, "the seeded policy")
    with cluster.channel(cluster.specs[2].api) as ch:  # a part for shard 0 only, as a forward carries it
        coordinator_pb2_grpc.CoordinatorStub(ch).SetPolicy(
            C.SetPolicyRequest(text=GOOD, shards=[0], version=2), timeout=30)
    until(lambda: all(shards == (2, 1, 1, 1) for _v, _t, shards in policies(cluster).values()), 15,
          "version 2 on shard 0 only")
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    r = hsmctl(cluster, "policy", "set", "--expect-version", "1", str(good))  # as looked before the first try
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0] == "policy version 2 set on every shard", r.stdout
    assert "  settings.max_attempts: 3 -> 5" in out and "  fair_share.by: none -> user" in out, r.stdout
    until(lambda: everywhere(cluster, 2, GOOD), 15, "version 2 on every shard of every replica")
    r = hsmctl(cluster, "policy", "set", str(good))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "policy version 3 set on every shard; no change in meaning\n"
    until(lambda: everywhere(cluster, 3, GOOD), 15, "version 3 everywhere")
    cluster.check_converged()


def test_policy_change_mid_flood_leader_kill_and_full_restart(cluster: ProcCluster, tmp_path: Path) -> None:
    cluster.start_all()
    fs = tmp_path / "fs"
    SimFS.create(fs, "sys")
    args = [a.replace("{fs}", str(fs)) for a in NULL_AGENT]
    cluster.start_agent("m1", *args)
    cluster.start_agent("m2", *args)
    until(lambda: everywhere(cluster, 1), 30, "the seeded policy")
    client = CoordinatorClient(cluster.addresses, tls=cluster.client_tls, timeout=20)
    second = "settings: {max_attempts: 4}\nfair_share: {by: user}\npriorities: {kinds: {archive: 5}}\n"
    third = second + "rules: [{name: low, match: {kind: archive}, then: {priority: -3}}]\n"
    with Load(cluster) as load:
        until(lambda: load.batches >= 15, 30, "load to run")
        assert client.set_policy(second).version == 2
        until(lambda: load.batches >= 30, 30, "load to go on under version 2")
        victim = cluster.leader_of(0)
        cluster.kill(victim, signal.SIGKILL)
        survivor = next(s.id for s in cluster.live())
        until(lambda: all(v and v != victim for v in cluster.leaders(survivor).values()), 15,
              "new leaders for every shard")
        reply = None
        failures: list[str] = []
        deadline = time.monotonic() + 60
        while reply is None:  # a set may meet the election: retried, it completes its version everywhere
            try:
                reply = client.set_policy(third)
            except Exception as exc:  # noqa: BLE001
                failures.append(str(exc))
                assert time.monotonic() < deadline, f"policy set never went through: {failures[-3:]}"
                time.sleep(0.5)
        before = load.batches
        until(lambda: load.batches >= before + 15, 30, "submits to go on under the new policy")
    assert not load.errors or all("UNAVAILABLE" in e or "leader" in e or "confirm" in e for e in load.errors)
    final = client.wait(sorted(load.acked), deadline=120)
    assert set(final) == set(load.acked), f"{len(set(load.acked) - set(final))} acknowledged actions lost"
    assert {a.state for a in final.values()} == {T.SUCCEEDED}
    assert not no_concurrent_runs(cluster.agent_runs())
    version = reply.version
    until(lambda: everywhere(cluster, version, third), 15, "the last policy on every live replica")
    # the killed replica comes back and catches up, policy included
    cluster.start(victim)
    cluster.wait_ready()
    until(lambda: everywhere(cluster, version, third), 30, "the restarted replica to catch up the policy")
    cluster.check_converged()
    # every replica killed and started again: the policy is the same
    client.close()
    for s in list(cluster.live()):
        cluster.kill(s.id, signal.SIGKILL)
    cluster.start_all()
    until(lambda: everywhere(cluster, version, third), 30, "the policy after a restart of every replica")
    with CoordinatorClient(cluster.addresses, tls=cluster.client_tls) as c2:
        assert c2.get_policy().text == third


def test_tagged_archives_go_to_the_agent_that_serves_the_tag(cluster: ProcCluster, tmp_path: Path) -> None:
    """A rule tags /tape archives; only the agent started with --tags tape
    runs them; untagged ones go to both. Batching hands the tagged ones
    over together."""
    cluster.start_all()
    fs = tmp_path / "fs"
    SimFS.create(fs, "sys")
    args = [a.replace("{fs}", str(fs)) for a in NULL_AGENT]
    cluster.start_agent("plain", *args)
    cluster.start_agent("taper", *args, "--tags", "tape")
    until(lambda: everywhere(cluster, 1), 30, "the seeded policy")
    with CoordinatorClient(cluster.addresses, tls=cluster.client_tls, timeout=20) as client:
        until(lambda: {a.agent_id: list(a.tags) for a in client.status().agents} == {"plain": [], "taper": ["tape"]},
              15, "both agents, with their tags, in status")
        client.set_policy("rules: [{name: to-tape, match: {path: '/tape/**'}, then: {tag: tape}}]\n"
                          "batching: {size: 20, idle: 30}\n")
        items = [submit_item("sys", Fid(0x200000402, n), "archive", path=f"/{'tape' if n % 2 else 'disk'}/f{n}")
                 for n in range(1, 41)]
        ids = [r.action_id for r in client.submit(items)]
        final = client.wait(ids, deadline=60)
    ran = {i: final[i].agent for i in ids}
    tagged = [i for n, i in enumerate(ids, start=1) if n % 2]
    assert {ran[i] for i in tagged} == {"taper"}
    assert all(final[i].data == b"tag=tape" for i in tagged)
    assert {ran[i] for i in ids if i not in tagged} <= {"plain", "taper"}
    assert {a.state for a in final.values()} == {T.SUCCEEDED}
    cluster.check_converged()


def test_a_replica_that_led_nothing_when_the_policy_changed_follows_it_once_it_leads(tmp_path: Path) -> None:
    """One shard: two of the three replicas lead nothing when a policy that
    batches tagged archives is set. The leader is killed; one of them takes
    over, and must decide by the policy in force (its batch opens when idle)
    though no shard handed it the change as it applied it. Before, it kept
    the seeded policy's "no batching" while the shard's state held the
    tagged archives for a batch: they never went."""
    cluster = ProcCluster(tmp_path, shards=1, agent_grace=60.0)
    try:
        cluster.start_all()
        fs = tmp_path / "fs"
        SimFS.create(fs, "sys")
        cluster.start_agent("taper", *[a.replace("{fs}", str(fs)) for a in NULL_AGENT], "--tags", "tape")
        until(lambda: everywhere(cluster, 1), 30, "the seeded policy")
        with CoordinatorClient(cluster.addresses, tls=cluster.client_tls, timeout=20) as client:
            client.set_policy("rules: [{name: to-tape, match: {path: '/tape/**'}, then: {tag: tape}}]\n"
                              "batching: {size: 50, idle: 1}\n")
            until(lambda: everywhere(cluster, 2), 30, "version 2 on every replica")
            cluster.kill(cluster.leader_of(0))
            items = [submit_item("sys", Fid(0x200000403, n), "archive", path=f"/tape/f{n}") for n in range(1, 4)]
            ids = [r.action_id for r in client.submit(items)]
            final = client.wait(ids, deadline=60)
        assert {a.state for a in final.values()} == {T.SUCCEEDED}
        assert {a.agent for a in final.values()} == {"taper"}
    finally:
        cluster.stop()


def test_the_readme_policy_samples(tmp_path: Path) -> None:
    """The README's site policy is valid, and what hsmctl prints for its
    set and get is what the README shows (on a cluster with the default
    settings)."""
    from tests.readme import assert_sample, block_after

    cluster = ProcCluster(tmp_path, agent_grace=60.0)
    try:
        _readme_samples(cluster, tmp_path, assert_sample, block_after)
    finally:
        cluster.stop()


def _readme_samples(cluster: ProcCluster, tmp_path: Path, assert_sample: Any, block_after: Any) -> None:
    cluster.start_all()
    until(lambda: everywhere(cluster, 1), 30, "the seeded policy")
    site = tmp_path / "site.yaml"
    site.write_text(block_after("A site's policy (`site.yaml`):") + "\n")
    r = hsmctl(cluster, "policy", "set", str(site))
    assert r.returncode == 0, r.stderr
    assert_sample("site.yaml` prints what changed:", r.stdout)
    # no agent serves the tag a rule sets: set, with a warning naming the rule's line
    assert r.stderr.startswith(f"{site}:9: warning: rule 'big-to-tape' sets tag 'tape', which no connected agent "
                               "serves"), r.stderr
    r = hsmctl(cluster, "policy", "get")
    assert r.returncode == 0, r.stderr
    assert_sample("`hsmctl policy get` prints the document in force", r.stdout)
