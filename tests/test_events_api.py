"""The HSM event log through the API, the client library and hsmctl
(issue 15, item 3): register, read, acknowledge, long-poll, roles, status,
and a three-replica cluster whose leader is killed while two consumers
(one lagging) read: no record missed, none released early, none delivered
again after its acknowledgement."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from coordinator.roles import USER
from hsm.client import (
    CoordinatorClient,
    CoordinatorError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    submit_item,
)
from hsm.fid import Fid
from hsm.simfs import SimFS
from hsm.v1 import coordinator_pb2 as cpb
from hsm.v1 import types_pb2 as tpb
from hsmctl.cli import main as hsmctl_main
from tests.cluster import ProcCluster, until
from tests.readme import README, shape
from tests.test_agentd import agent_config, registered, running_agent, submit, tree  # noqa: F401 - fixture

KiB = 1024


def archive_all(client: CoordinatorClient, t: Any, n: int, prefix: str) -> list[int]:
    files = [t.add(f"{prefix}{i}", KiB) for i in range(n)]
    ids = [submit(client, fid, "archive") for _, fid, _ in files]
    done = client.wait(ids, deadline=30)
    assert all(done[i].state == tpb.SUCCEEDED for i in ids)
    return ids


def test_a_consumer_reads_what_ended_after_it_registered_and_acknowledges_it(
        coordinator_factory: Any, tree: Any) -> None:  # noqa: F811
    c = coordinator_factory(shards=2)
    with c.client(timeout=10) as client, running_agent(agent_config(c, tree)):
        until(lambda: registered(client, "a1"), 10, "agent a1 to register")
        before = archive_all(client, tree, 2, "early")
        cursors = client.register_event_consumer("robinhood")
        assert sorted(x.shard for x in cursors) == [0, 1] and all(x.acked == 0 for x in cursors)
        ids = archive_all(client, tree, 5, "f")
        got = client.read_events("robinhood")
        assert sorted(e.action_id for e in got.events) == sorted(ids), "only what ended after it registered"
        assert not set(before) & {e.action_id for e in got.events}
        e = got.events[0]
        assert (e.type, e.event, e.errno, e.flags, e.fsname, e.archive_id) == (16, "ARCHIVE", 0, 0, "simfs", 1)
        assert e.time > 0 and e.recno >= 1
        assert sum(x.lag for x in got.cursors) == 5
        again = client.read_events("robinhood")
        assert [x.recno for x in again.events] == [x.recno for x in got.events], "not acknowledged: again"
        client.ack_events("robinhood", got.events[:2])
        rest = client.read_events("robinhood")
        assert {x.action_id for x in rest.events} == {x.action_id for x in got.events[2:]}
        client.ack_events("robinhood", rest.events)
        assert list(client.read_events("robinhood").events) == []
        (status,) = client.status().consumers
        assert (status.name, status.lag, status.missed) == ("robinhood", 0, 0)

        # a second consumer holds records back until it has them too
        client.register_event_consumer("acct")
        more = archive_all(client, tree, 3, "g")
        fast = client.read_events("robinhood")
        client.ack_events("robinhood", fast.events)
        lagging = client.read_events("acct")
        assert sorted(x.action_id for x in lagging.events) == sorted(more)
        assert {x.name: x.lag for x in client.status().consumers} == {"acct": 3, "robinhood": 0}
        view = c.node.metrics_view()  # what hsm_events_consumer_lag{shard, consumer} exports
        lags = {name: sum(s.consumers[name][0] for s in view.shards) for name in ("acct", "robinhood")}
        assert lags == {"acct": 3, "robinhood": 0}
        client.deregister_event_consumer("acct")
        assert [x.name for x in client.status().consumers] == ["robinhood"]
        with pytest.raises(NotFound, match="no event consumer 'acct'"):
            client.read_events("acct")


def test_a_read_waits_for_the_next_record_and_bad_requests_are_refused(
        coordinator_factory: Any, tree: Any) -> None:  # noqa: F811
    c = coordinator_factory()
    with c.client(timeout=10) as client, running_agent(agent_config(c, tree)):
        until(lambda: registered(client, "a1"), 10, "agent a1 to register")
        client.register_event_consumer("waiter")
        answer: list[cpb.ReadEventsResponse] = []
        reader = threading.Thread(target=lambda: answer.append(client.read_events("waiter", wait=30)))
        reader.start()
        (aid,) = archive_all(client, tree, 1, "w")
        reader.join(40)
        assert answer and [e.action_id for e in answer[0].events] == [aid], "the waiting read got it"
        with pytest.raises(InvalidArgument, match="wait must be 0-60"):
            client.read_events("waiter", wait=61)
        with pytest.raises(InvalidArgument, match="event consumer name"):
            client.register_event_consumer("no spaces")
        with pytest.raises(NotFound):
            client.deregister_event_consumer("never")


def test_a_user_certificate_may_not_read_events(coordinator_factory: Any) -> None:
    c = coordinator_factory()
    with c.client(USER, "alice", timeout=5) as client:
        with pytest.raises(PermissionDenied, match="ReadEvents needs role admin, operator or replica"):
            client.read_events("x")
        with pytest.raises(PermissionDenied):
            client.register_event_consumer("x")


def test_hsmctl_events_prints_changelog_lines_and_acknowledges_them(
        coordinator_factory: Any, tree: Any,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    c = coordinator_factory()
    for k, v in c.env().items():
        monkeypatch.setenv(k, v)
    base = ["--coordinators", c.address]
    assert hsmctl_main([*base, "events", "--consumer", "rbh", "--register"]) == 0
    assert "event consumer rbh registered on 1 shard(s)" in capsys.readouterr().out
    with c.client(timeout=10) as client, running_agent(agent_config(c, tree)):
        until(lambda: registered(client, "a1"), 10, "agent a1 to register")
        (aid,) = archive_all(client, tree, 1, "h")
    assert hsmctl_main([*base, "events", "--consumer", "rbh", "--no-ack", "--json"]) == 0
    (row,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert (row["action_id"], row["event"], row["type"], row["flags"], row["errno"]) == (aid, "ARCHIVE", 16, 0, 0)
    assert hsmctl_main([*base, "events", "--consumer", "rbh"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"0:{row['recno']} 16HSM ") and f" 0x0 t={row['fid']} ARCHIVE errno=0 archive_id=1 " \
        f"action={aid} fs=simfs" in line
    sample = next(x for x in README.read_text().splitlines() if " 16HSM " in x).lstrip("#").strip()
    assert shape(line, replace={"ARCHIVE": "RESTORE", "fs=simfs": "fs=lustre1"}) == shape(sample), "the README's sample"
    assert hsmctl_main([*base, "events", "--consumer", "rbh"]) == 0
    assert capsys.readouterr().out == "", "acknowledged: not printed again"
    assert hsmctl_main([*base, "events", "--consumer", "rbh", "--deregister"]) == 0
    assert hsmctl_main([*base, "events", "--consumer", "rbh"]) == 1
    assert "no event consumer 'rbh'" in capsys.readouterr().err


# -- three replicas, the leader killed while two consumers read -----------------------


@pytest.mark.slow
def test_two_consumers_one_lagging_lose_nothing_and_get_nothing_twice_across_a_leader_kill(tmp_path: Path) -> None:
    cluster = ProcCluster(tmp_path, shards=2)
    fs = tmp_path / "fs"
    SimFS.create(fs, "sys")
    try:
        cluster.start_all()
        cluster.start_agent("m1", "--fs-root", str(fs), "--mover", "null", "--null-delay", "0.01",
                            "--slots", "archive=8,restore=0,remove=0")
        with CoordinatorClient(cluster.addresses, tls=cluster.client_tls, timeout=30) as client:
            client.register_event_consumer("fast")
            client.register_event_consumer("slow")
            fast = Consumer(client, "fast")
            ids: list[int] = []

            def batch(start: int, n: int) -> None:
                items = [submit_item("sys", Fid(0x200000400, start + i, 0), "archive", 1) for i in range(n)]
                res: list[Any] = []

                def once() -> bool:  # leaders move in the first seconds, and after the kill
                    try:
                        res[:] = client.submit(items)  # same items again: their idempotency keys answer
                    except CoordinatorError:
                        return False
                    return True
                until(once, 60, f"the batch at {start} to be acknowledged")
                ids.extend(r.action_id for r in res)

            batch(1, 40)
            until(lambda: fast.step() or len(fast.seen) >= 40, 60, "fast to see the first 40")
            slow = Consumer(client, "slow")
            slow.step(limit=5)  # the lagging one: five records, acknowledged
            victim = cluster.leader_of(0)
            cluster.kill(victim, signal.SIGKILL)
            batch(100, 40)  # while a new leader is elected
            until(lambda: fast.step() or len(fast.seen) >= 80, 90, "fast to see all 80")
            cluster.start(victim)
            cluster.wait_ready()
            until(lambda: slow.step() or len(slow.seen) >= 80, 90, "slow to catch up")
            for c in (fast, slow):
                assert sorted(c.seen) == sorted(ids), f"{c.name}: missed or extra records"
                assert c.missed == 0
            # status answers from one replica's state: it may apply the last acknowledgements a moment later
            until(lambda: all(x.lag == 0 for x in client.status().consumers), 30, "every replica to show no lag")
    finally:
        cluster.stop()


class Consumer:
    """Reads, checks that nothing it acknowledged comes back, acknowledges.
    A record read again before its acknowledgement went through (an ack
    lost with a killed leader) is allowed: it was never acknowledged."""

    def __init__(self, client: CoordinatorClient, name: str) -> None:
        self.client = client
        self.name = name
        self.acked: dict[int, int] = {}  # shard -> the last record acknowledged
        self.records: dict[tuple[int, int], int] = {}  # (shard, recno) -> action id
        self.missed = 0

    @property
    def seen(self) -> list[int]:
        return list(self.records.values())

    def step(self, limit: int = 1000) -> bool:
        """One read and its acknowledgement; False (for ``until``)."""
        resp = self.client.read_events(self.name, limit, wait=0.5)
        for e in resp.events:
            assert e.recno > self.acked.get(e.shard, 0), f"{self.name}: {e.shard}:{e.recno} came back after its ack"
            assert self.records.setdefault((e.shard, e.recno), e.action_id) == e.action_id
        self.missed = sum(c.missed for c in resp.cursors)
        events = list(resp.events)
        if events:
            for c in self.client.ack_events(self.name, events):
                self.acked[c.shard] = max(self.acked.get(c.shard, 0), c.acked)
        return False
