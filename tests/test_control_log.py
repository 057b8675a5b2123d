"""One change of the hsm_control mode is one INFO line, on the replica the
admin asked, saying what the mode was, what it is now and who asked (issue
10, item 12). It used to be a WARNING on that replica and one more on each
leader it forwarded a shard to, up to three per replica."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from hsm.v1 import coordinator_pb2 as C
from hsm.v1 import coordinator_pb2_grpc
from tests.cluster import ProcCluster, until
from tests.test_leaders import wait_balanced

LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+) (?P<logger>\S+): (?P<msg>.*control mode.*)$")

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcCluster]:
    c = ProcCluster(tmp_path)  # 4 shards: r1 leads 0 and 3, r2 leads 1, r3 leads 2
    try:
        yield c
    finally:
        c.stop()


def control_lines(c: ProcCluster) -> list[tuple[str, str, str]]:
    """(replica, level, message) of every log line about the control mode."""
    out = []
    for s in c.specs:
        for line in (c.logs / f"{s.id}.log").read_text().splitlines():
            m = LINE.match(line)
            if m:
                out.append((s.id, m["level"], m["msg"]))
    return out


def control(c: ProcCluster, rid: str, mode: str) -> None:
    with c.channel(c.spec(rid).api) as ch:
        coordinator_pb2_grpc.CoordinatorStub(ch).Control(C.ControlRequest(mode=mode), timeout=30)
    until(lambda: all(c.status(s.id).control == mode for s in c.live()), 10, f"every replica to apply {mode}")


def test_one_control_change_is_one_info_line_on_the_replica_asked(cluster: ProcCluster) -> None:
    cluster.start_all()
    wait_balanced(cluster, 30, "at creation")  # r2 leads one shard: it forwards the other three
    assert control_lines(cluster) == []

    control(cluster, "r2", "disabled")
    lines = control_lines(cluster)
    assert len(lines) == 1, lines
    [(rid, level, msg)] = lines
    assert (rid, level) == ("r2", "INFO"), lines
    assert re.fullmatch(r"control mode changed from enabled to disabled on every shard \(asked by \S+\)", msg), msg

    control(cluster, "r3", "enabled")
    control(cluster, "r3", "enabled")  # asked again: said once more, as unchanged
    rest = control_lines(cluster)[1:]
    assert [(r, lvl) for r, lvl, _m in rest] == [("r3", "INFO"), ("r3", "INFO")], rest
    assert rest[0][2].startswith("control mode changed from disabled to enabled on every shard (asked by "), rest
    assert rest[1][2].startswith("control mode enabled on every shard, unchanged (asked by "), rest
    cluster.check_converged()
