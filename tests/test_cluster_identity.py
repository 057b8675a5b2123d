"""Every replica says which cluster it belongs to, and clients and agents
check it: a replica of another cluster that answers on an expected address
(a second cluster on the same ports, a stale address list) is refused, not
trusted. Real replicas (real gRPC with mutual TLS, real Raft) and real
agentd. The replicas of both clusters hold certificates of one CA (a site's
CA for several clusters: TLS alone does not tell them apart)."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentd.config import load_config
from coordinator.cluster import free_ports
from hsm.client import (
    CLUSTER_METADATA_KEY,
    REPLICA_METADATA_KEY,
    CoordinatorClient,
    WrongCluster,
    submit_item,
)
from hsm.fid import Fid
from hsm.simfs import SimFS
from hsmctl.cli import main as hsmctl_main
from tests.cluster import until
from tests.test_agentd import agent_config, registered, running_agent, tree  # noqa: F401 - fixture

A_ID = "cluster-a"
B_ID = "cluster-b"


def hsmctl(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = hsmctl_main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def _total_actions(rc: Any) -> int:
    with rc.client(timeout=10) as c:
        return sum(k.count for k in c.status().counts)


def test_every_answer_names_the_cluster_and_replica_health_checks_too(coordinator_factory: Any) -> None:
    a = coordinator_factory(cluster_id=A_ID)
    with a.channel() as ch:
        resp, call = health_pb2_grpc.HealthStub(ch).Check.with_call(
            health_pb2.HealthCheckRequest(service="hsm.v1.Coordinator"), timeout=5)
        md = dict(call.initial_metadata())
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    assert md[CLUSTER_METADATA_KEY] == A_ID and md[REPLICA_METADATA_KEY] == "test"
    with a.client() as c:
        assert c.status().cluster_id == A_ID
        info = c.cluster_info()
        assert (info.cluster_id, info.replica) == (A_ID, "test")


def test_a_client_refuses_a_replica_of_another_cluster_and_sends_it_nothing(coordinator_factory: Any) -> None:
    b = coordinator_factory(cluster_id=B_ID)
    before = _total_actions(b)
    with b.client(cluster_id=A_ID, timeout=5) as c:
        with pytest.raises(WrongCluster) as err:
            c.submit([submit_item("fs1", Fid(0x200000400, 1, 0), "archive", 1)])
    assert B_ID in str(err.value) and A_ID in str(err.value) and b.address in str(err.value)
    # the refused answer was the one to a read (the member lookup), or the
    # submit never went out: either way cluster B holds no new action
    assert _total_actions(b) == before


def test_the_first_replica_that_answers_names_the_cluster_for_the_client(coordinator_factory: Any) -> None:
    """A client given A's and B's addresses (a stale list) talks to A; when
    A goes away it must not quietly carry on with B."""
    a = coordinator_factory(cluster_id=A_ID)
    b = coordinator_factory(cluster_id=B_ID)
    with CoordinatorClient(f"{a.address},{b.address}", timeout=5, retry_unavailable=1, tls=a.tls()) as c:
        assert c.status().cluster_id == A_ID
        assert c.cluster_id == A_ID
        a.stop()
        with pytest.raises(WrongCluster, match=f"belongs to cluster {B_ID}, not to cluster {A_ID}"):
            c.status()


def test_two_names_for_the_cluster_that_disagree_are_refused(coordinator_factory: Any) -> None:
    a = coordinator_factory(cluster_id=A_ID)
    with a.client(cluster_id=A_ID) as c:
        c.expect_cluster(A_ID, "the tree")  # the same: fine
        with pytest.raises(WrongCluster, match="names cluster cluster-b"):
            c.expect_cluster(B_ID, "the tree /x")
        assert c.status().cluster_id == A_ID


def test_an_agent_of_another_cluster_is_refused_and_says_why(
    coordinator_factory: Any, tree: Any, caplog: pytest.LogCaptureFixture,  # noqa: F811
) -> None:
    a = coordinator_factory(cluster_id=A_ID)
    caplog.set_level(logging.ERROR, logger="agentd.daemon")
    with a.client(timeout=10) as client:
        with running_agent(agent_config(a, tree, agent_id="wrong", cluster_id=B_ID)):
            until(lambda: "belongs to cluster cluster-a, not to cluster cluster-b" in caplog.text, 30,
                  "the agent's error about the other cluster")
            assert not registered(client, "wrong")
        with running_agent(agent_config(a, tree, agent_id="right", cluster_id=A_ID)):
            until(lambda: registered(client, "right"), 30, "the agent of this cluster registered")


def test_the_refusal_is_logged_at_once_after_a_first_other_failure(
    coordinator_factory: Any, tls_ca: Any, tree: Any, caplog: pytest.LogCaptureFixture,  # noqa: F811
) -> None:
    """The agent starts before its coordinator (first attempt: connection
    refused, logged as a warning); the refusal that follows is a new kind
    of failure and is logged at once, not a minute later (CI: the error
    was held back by the earlier warning's once-a-minute limit)."""
    port = free_ports(1)
    caplog.set_level(logging.INFO, logger="agentd.daemon")
    config = replace(agent_config(f"127.0.0.1:{port}", tree, agent_id="late", cluster_id=B_ID,
                                  reconnect_min_delay=0.2, reconnect_max_delay=0.2),
                     tls=tls_ca.agent("late"))
    with running_agent(config):
        until(lambda: "stream to coordinator" in caplog.text, 10, "the first attempt's warning")
        coordinator_factory(cluster_id=A_ID, api_port=port)
        until(lambda: "belongs to cluster cluster-a, not to cluster cluster-b" in caplog.text, 10,
              "the agent's error about the other cluster")
        refusals = [r for r in caplog.records if "refusing coordinator" in r.getMessage()]
        assert [r.levelno for r in refusals[:1]] == [logging.ERROR]


def test_an_agent_works_for_the_first_cluster_that_welcomes_it_only(
    coordinator_factory: Any, tree: Any, caplog: pytest.LogCaptureFixture,  # noqa: F811
) -> None:
    """No cluster id configured: the first Welcome names it (its streams
    start together, so either may be first); a replica of the other
    cluster in the agent's list gets refused and never holds the agent."""
    a = coordinator_factory(cluster_id=A_ID)
    b = coordinator_factory(cluster_id=B_ID)
    caplog.set_level(logging.INFO, logger="agentd.daemon")
    config = replace(agent_config(a, tree, agent_id="a2"), coordinators=(a.address, b.address))
    with running_agent(config) as agent, a.client(timeout=10) as ca, b.client(timeout=10) as cb:
        until(lambda: "refusing coordinator" in caplog.text, 10, "the agent refusing one of the clusters")
        ours, other = (ca, cb) if agent.cluster_id == A_ID else (cb, ca)
        assert agent.cluster_id in (A_ID, B_ID)
        until(lambda: registered(ours, "a2"), 10, f"the agent registered with {agent.cluster_id}")
        until(lambda: not registered(other, "a2"), 10, "the other cluster's replica without the agent")
        assert f"not to cluster {agent.cluster_id} this agent works for" in caplog.text
        assert not registered(other, "a2")


def test_agentd_takes_the_cluster_id_from_the_environment_flag_or_file(tmp_path: Any) -> None:
    cfg = tmp_path / "agentd.yaml"
    cfg.write_text(f"cluster_id: {A_ID}\nbackend: {{root: /srv}}\nmover: {{type: 'null'}}\n")
    assert load_config(str(cfg), environ={}).cluster_id == A_ID
    assert load_config(str(cfg), environ={"HSM_CLUSTER": B_ID}).cluster_id == B_ID
    cfg.write_text("cluster_id: 'not an id!'\nbackend: {root: /srv}\nmover: {type: 'null'}\n")
    with pytest.raises(Exception, match="cluster_id"):
        load_config(str(cfg), environ={})


# -- hsmctl: the tree, --cluster and $HSM_CLUSTER name the cluster ------------


def test_hsmctl_refuses_to_send_a_trees_request_to_another_cluster(
    coordinator_factory: Any, tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The admin's case: two local systems on one host, hsmctl pointed at
    the first, a file of the second's tree. Before, the first cluster
    archived its own file with the same FID and hsmctl said success."""
    monkeypatch.delenv("HSM_CLUSTER", raising=False)
    a = coordinator_factory(cluster_id=A_ID)
    for k, v in a.env().items():  # hsmctl presents the admin's certificate
        monkeypatch.setenv(k, v)
    fs_b = SimFS.create(tmp_path / "b", "simfs")
    fs_b.set_cluster_id(B_ID)
    f = fs_b.root / "results.dat"
    f.write_bytes(b"x" * 100)
    before = _total_actions(a)
    rc, _out, err = hsmctl(capsys, "--coordinators", a.address, "archive", "--wait", str(f))
    assert rc == 3
    assert f"belongs to cluster {A_ID}, not to cluster {B_ID} named by the simfs tree {fs_b.root}" in err
    assert _total_actions(a) == before, "nothing was submitted to the other cluster"

    # the tree of cluster A, files of both trees at once, --cluster, $HSM_CLUSTER
    fs_a = SimFS.create(tmp_path / "a", "simfs")
    fs_a.set_cluster_id(A_ID)
    g = fs_a.root / "g"
    g.write_bytes(b"y")
    rc, _out, err = hsmctl(capsys, "--coordinators", a.address, "archive", str(g), str(f))
    assert rc == 3 and f"names cluster {B_ID}, but the simfs tree {fs_a.root} names cluster {A_ID}" in err
    assert _total_actions(a) == before
    rc, _out, err = hsmctl(capsys, "--coordinators", a.address, "--cluster", B_ID, "archive", str(g))
    assert rc == 3 and f"names cluster {A_ID}, but --cluster names cluster {B_ID}" in err
    rc, _out, err = hsmctl(capsys, "--coordinators", a.address, "--cluster", B_ID, "status")
    assert rc == 3 and "named by --cluster" in err
    monkeypatch.setenv("HSM_CLUSTER", B_ID)
    rc, _out, err = hsmctl(capsys, "--coordinators", a.address, "status")
    assert rc == 3 and "named by $HSM_CLUSTER" in err
    monkeypatch.setenv("HSM_CLUSTER", A_ID)
    rc, out, err = hsmctl(capsys, "--coordinators", a.address, "archive", str(g))
    assert rc == 0, err
    assert _total_actions(a) == before + 1
    rc, out, _err = hsmctl(capsys, "--coordinators", a.address, "status")
    assert rc == 0 and f"cluster {A_ID}" in out.splitlines()[0]
