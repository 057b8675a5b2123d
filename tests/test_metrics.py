"""Prometheus metrics (issue 15, coordinator/metrics.py): a real replica
serving /metrics over HTTP, a real agent moving real files, and the answer
read with prometheus_client's own parser; the figures must move as the
actions do."""

from __future__ import annotations

import urllib.request
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import hsm
from coordinator.config import ConfigError, validate
from coordinator.metrics import ReplicaMetrics
from coordinator.state import Ended, FirstStart, Kind, Requeued, State
from hsm.client import NotFound
from hsm.metrics import errno_label, split_host_port
from hsm.v1 import types_pb2 as tpb
from tests.cluster import until
from tests.test_agentd import agent_config, registered, running_agent, submit, tree  # noqa: F401 - fixture

KiB = 1024


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics: {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_a_replica_serves_its_figures_and_they_move_as_actions_run(coordinator_factory: Any, tree: Any) -> None:  # noqa: F811
    c = coordinator_factory(shards=2, metrics_listen="127.0.0.1:0")
    port = c.node.metrics_port
    assert port
    before = scrape(port)
    assert value(before, "hsm_replica_info", replica="test", version=hsm.__version__,
                 cluster=c.node.cluster.cluster_id) == 1
    # the collector's pauses, per generation (recorded once hsm.gctune watches them: the CLI does)
    assert all(("hsm_gc_pause_seconds_count", (("generation", g),)) in before for g in "012")
    for shard in ("0", "1"):
        assert value(before, "hsm_raft_leading", shard=shard) == 1
        assert value(before, "hsm_raft_has_leader", shard=shard) == 1
        assert value(before, "hsm_raft_term", shard=shard) >= 1
        assert value(before, "hsm_raft_journal_bytes", shard=shard) > 0
        assert value(before, "hsm_raft_journal_unwritable", shard=shard) == 0

    files = [tree.add(f"f{i}", 64 * KiB) for i in range(6)]
    with c.client(timeout=10) as client:
        ids = [submit(client, fid, "archive") for _, fid, _ in files]
        waiting = scrape(port)
        depth = sum(v for (name, _), v in waiting.items() if name == "hsm_queue_depth")
        assert depth == 6, "six archives wait, none dispatched: no agent yet"
        assert sum(v for (name, labels), v in waiting.items()
                   if name == "hsm_actions" and dict(labels)["state"] == "WAITING") == 6
        # (a client may retry a call that timed out: >=; the last call may be
        # counted just after its caller had the answer)
        until(lambda: value(scrape(port), "hsm_grpc_calls_total", method="/hsm.v1.Coordinator/Submit",
                            code="OK") >= 6, 5, "the six Submit calls to be counted")

        with running_agent(agent_config(c, tree)):
            until(lambda: registered(client, "a1"), 10, "agent a1 to register")
            agent = scrape(port)
            assert value(agent, "hsm_agent_connected", agent="a1") == 1
            assert value(agent, "hsm_agent_slots", agent="a1", kind="archive") >= 1
            done = client.wait(ids, deadline=30)
            assert all(done[i].state == tpb.SUCCEEDED for i in ids)
            after = scrape(port)
    assert value(after, "hsm_actions_started_total", kind="archive") == 6
    assert value(after, "hsm_actions_finished_total", kind="archive", state="SUCCEEDED", errno="0") == 6
    assert value(after, "hsm_action_run_seconds_count", kind="archive", state="SUCCEEDED") == 6
    assert value(after, "hsm_action_wait_seconds_count", kind="archive") == 6
    assert value(after, "hsm_action_wait_seconds_sum", kind="archive") > 0
    assert sum(v for (name, _), v in after.items() if name == "hsm_queue_depth") == 0
    # a refused call is counted with its code
    with c.client(timeout=10) as client:
        with pytest.raises(NotFound):
            client.get_action(999_999_999_999)
    # (a call is counted when its handler ends, which may be just after the
    # caller has its answer: wait for the count, bounded)
    until(lambda: value(scrape(port), "hsm_grpc_calls_total", method="/hsm.v1.Coordinator/GetAction",
                        code="NOT_FOUND") == 1, 5, "the refused GetAction to be counted")


def test_counted_effects_make_counters_and_histograms() -> None:
    m = ReplicaMetrics()
    m.effect(FirstStart(1000, Kind.RESTORE, 2.0))
    m.effect(Requeued(1000, Kind.RESTORE, 5))
    m.effect(Ended(1000, Kind.RESTORE, State.FAILED, 5, 7.5))
    m.effect(Ended(2000, Kind.ARCHIVE, State.CANCELED, 125, -1.0))  # never started: no run time
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in m.registry.collect() for s in fam.samples}
    assert got[("hsm_actions_started_total", (("kind", "restore"),))] == 1
    assert got[("hsm_actions_requeued_total", (("errno", "EIO"), ("kind", "restore")))] == 1
    assert got[("hsm_actions_finished_total", (("errno", "EIO"), ("kind", "restore"), ("state", "FAILED")))] == 1
    assert got[("hsm_actions_finished_total", (("errno", "ECANCELED"), ("kind", "archive"),
                                               ("state", "CANCELED")))] == 1
    assert got[("hsm_action_run_seconds_sum", (("kind", "restore"), ("state", "FAILED")))] == 7.5
    assert ("hsm_action_run_seconds_count", (("kind", "archive"), ("state", "CANCELED"))) not in got
    assert got[("hsm_action_wait_seconds_bucket", (("kind", "restore"), ("le", "2.5")))] == 1
    assert errno_label(0) == "0" and errno_label(99999) == "99999"


def test_metrics_listen_is_checked_and_a_taken_port_stops_the_start(coordinator_factory: Any) -> None:
    assert split_host_port("0.0.0.0:9600") == ("0.0.0.0", 9600)
    assert split_host_port("[::]:9600") == ("::", 9600)
    for bad in ("9600", "host:", ":9600", "host:99999", "host:http"):
        with pytest.raises(ValueError, match="expected HOST:PORT"):
            split_host_port(bad)
    c = coordinator_factory(metrics_listen="127.0.0.1:0")
    with pytest.raises(ConfigError, match="metrics_listen 'nohost'"):
        validate(replace(c.config, metrics_listen="nohost"))
    with pytest.raises(Exception, match=f"cannot serve metrics on 127.0.0.1:{c.node.metrics_port}"):
        coordinator_factory(metrics_listen=f"127.0.0.1:{c.node.metrics_port}")


def test_no_metrics_listen_serves_nothing_and_counts_nothing(coordinator_factory: Any) -> None:
    c = coordinator_factory()
    assert c.node.metrics is None and c.node.metrics_port == 0


# -- agentd ---------------------------------------------------------------------


def test_agentd_serves_bytes_moved_transfers_errors_and_its_streams(coordinator_factory: Any, tree: Any) -> None:  # noqa: F811
    c = coordinator_factory()
    sizes = (1, 100 * KiB, 1024 * KiB + 7)
    files = [tree.add(f"f{i}", n) for i, n in enumerate(sizes)]
    gone, gone_fid, _ = tree.add("gone", 10)
    gone.unlink()  # its archive fails in the mover: no such file
    with c.client(timeout=10) as client, running_agent(agent_config(c, tree, metrics_listen="127.0.0.1:0")) as agent:
        until(lambda: registered(client, "a1"), 10, "agent a1 to register")
        port = agent.metrics_port
        assert port
        idle = scrape(port)
        assert ("hsm_gc_pause_seconds_count", (("generation", "2"),)) in idle
        assert value(idle, "hsm_agentd_stream_up", agent="a1", coordinator=c.address) == 1
        assert value(idle, "hsm_agentd_slots", agent="a1", kind="archive") >= 1
        assert value(idle, "hsm_agentd_credits", agent="a1", coordinator=c.address, kind="archive") >= 1
        ids = [submit(client, fid, "archive") for _, fid, _ in files]
        bad = submit(client, gone_fid, "archive")
        done = client.wait([*ids, bad], deadline=30)
        assert all(done[i].state == tpb.SUCCEEDED for i in ids)
        assert done[bad].state == tpb.FAILED
        after = scrape(port)
    assert value(after, "hsm_agentd_bytes_total", agent="a1", kind="archive") == sum(sizes)
    assert value(after, "hsm_agentd_transfer_seconds_count", agent="a1", kind="archive") >= 4
    assert value(after, "hsm_agentd_transfers_total", agent="a1", kind="archive") >= 4
    errors = {dict(labels)["errno"]: v for (name, labels), v in after.items() if name == "hsm_agentd_mover_errors_total"}
    assert errors.get(errno_label(done[bad].errno), 0) >= 1, errors
    assert value(after, "hsm_agentd_running", agent="a1", kind="archive") == 0


def test_agentd_metrics_listen_is_checked(tmp_path: Any) -> None:
    from agentd.config import ConfigError as AgentConfigError
    from agentd.config import load_config
    cfg = tmp_path / "agentd.yaml"
    cfg.write_text("backend: {root: /srv}\nmover: {type: 'null'}\nmetrics_listen: '127.0.0.1:9601'\n")
    assert load_config(str(cfg), environ={}).metrics_listen == "127.0.0.1:9601"
    cfg.write_text("backend: {root: /srv}\nmover: {type: 'null'}\nmetrics_listen: 9601\n")
    with pytest.raises(AgentConfigError, match="metrics_listen"):
        load_config(str(cfg), environ={})
    cfg.write_text("backend: {root: /srv}\nmover: {type: 'null'}\nmetrics_listen: 'nohost'\n")
    with pytest.raises(AgentConfigError, match="metrics_listen.*expected HOST:PORT"):
        load_config(str(cfg), environ={})
