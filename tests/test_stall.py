"""A hung daemon says where it hangs (hsm.stall): the decision, a real
stalled loop in a subprocess, and ``kill -USR1`` on a real replica and agent."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from hsm import stall
from hsm.simfs import SimFS
from tests.cluster import ENV, ProcCluster, until


def test_a_stall_is_reported_once_and_its_end_once() -> None:
    w = stall.Watch(after=10.0, now=100.0)
    assert w.check(109.9) is None  # not yet
    assert w.beat(105.0) is None  # it turned: no stall to end
    assert w.check(114.0) is None
    assert w.check(115.0) == 10.0  # 10 s since the last beat
    assert w.check(130.0) is None  # reported already
    assert w.beat(131.0) == 26.0  # back after 26 s
    assert w.beat(132.0) is None
    assert w.check(142.5) == 10.5  # a second stall is a new report


def test_zero_turns_it_off() -> None:
    w = stall.Watch(after=0.0, now=0.0)
    assert w.check(10**6) is None
    assert stall.after_from_env(None) == stall.DEFAULT_AFTER
    assert stall.after_from_env("  ") == stall.DEFAULT_AFTER
    assert stall.after_from_env("0") == 0.0
    assert stall.after_from_env("2.5") == 2.5
    for bad in ("-1", "soon", "1e9", "nan"):
        with pytest.raises(ValueError, match="HSM_STALL_DUMP_AFTER"):
            stall.after_from_env(bad)


SCRIPT = textwrap.dedent("""
    import asyncio, logging, sys, time
    from hsm import stall
    logging.basicConfig(stream=sys.stderr, level=logging.INFO)

    def stuck_somewhere():
        time.sleep(2.5)  # the loop does not turn meanwhile

    async def main():
        w = stall.start("test", after=float(sys.argv[1]))
        await asyncio.sleep(0.3)
        stuck_somewhere()
        await asyncio.sleep(0.5)
        if w is not None:
            w.stop()
        await asyncio.sleep(1.0)  # stopped: nothing more is reported

    asyncio.run(main())
""")


def _run(after: str) -> str:
    r = subprocess.run([sys.executable, "-c", SCRIPT, after], capture_output=True, text=True, timeout=60, env=ENV)
    assert r.returncode == 0, r.stderr
    return r.stderr


def test_a_stalled_loop_logs_the_stack_of_the_call_that_holds_it() -> None:
    err = _run("1")
    assert err.count("the event loop has not run for") == 1, err
    # faulthandler's dump names the function the loop is stuck in
    assert "in stuck_somewhere" in err, err
    assert err.count("the event loop runs again after") == 1, err
    assert err.index("has not run") < err.index("in stuck_somewhere") < err.index("runs again")


def test_no_report_without_a_stall_or_when_off() -> None:
    assert "has not run" not in _run("5"), "2.5 s is shorter than 5 s"
    assert "has not run" not in _run("0")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcCluster]:
    c = ProcCluster(tmp_path, replicas=1, shards=1)
    c.start_all()
    try:
        yield c
    finally:
        c.stop()


def test_usr1_writes_every_threads_stack_and_the_daemons_go_on(cluster: ProcCluster, tmp_path: Path) -> None:
    SimFS.create(tmp_path / "fs", "stallfs")
    (tmp_path / "archive").mkdir()
    cluster.start_agent("mover1", "--fs-root", str(tmp_path / "fs"), "--archive-root", str(tmp_path / "archive"))
    logs = {"r1": cluster.logs / "r1.log", "mover1": cluster.logs / "mover1.log"}
    until(lambda: "working for cluster" in logs["mover1"].read_text(), 30,
          lambda: f"the agent to be welcomed: {logs['mover1'].read_text()[-2000:]}")
    procs = {"r1": cluster.procs["r1"], "mover1": cluster.agents["mover1"]}
    mains = {"r1": "coordinator/cli.py", "mover1": "agentd/cli.py"}
    for name, p in procs.items():
        p.send_signal(signal.SIGUSR1)
        # the dump: every thread's stack, the main one (the loop's) first
        until(lambda name=name: "Current thread" in logs[name].read_text(), 10, f"{name}'s stacks")
        text = logs[name].read_text()
        assert mains[name] in text and "Thread 0x" in text, text[-3000:]
        assert p.poll() is None, f"{name} died on SIGUSR1"
    cluster.wait_ready()
    assert cluster.status("r1").shards[0].leader
