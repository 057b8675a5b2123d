"""``hsmctl top`` (issue 15): the one-shot snapshot when stdout is not a
terminal, against a real coordinator with a real agent moving a file; the
rates and the screen budget as pure functions; and the live view in a real
terminal: a private tmux server, keys sent with send-keys, the screen read
with capture-pane (polled with a deadline)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from agentd.config import SlotsConfig
from coordinator.cluster import free_ports
from hsm.client import submit_item
from hsm.fid import Fid
from hsm.v1 import coordinator_pb2 as cpb
from hsm.v1 import types_pb2 as tpb
from hsmctl import top
from tests import test_agentd
from tests.cluster import until
from tests.conftest import RunningCoordinator, SessionCa, tls_env
from tests.test_agentd import Tree, agent_config, registered, running_agent, submit
from tests.test_hsmctl import hsmctl

#: the fixture of test_agentd: a simfs tree "simfs" and an archive directory
tree = test_agentd.tree

KiB = 1024
TMUX = shutil.which("tmux")


def strip(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines()]


def row(lines: list[str], first: str) -> list[str]:
    """The cells of the line whose first cell is *first* (one word per cell)."""
    found = [line.split() for line in lines if line.split()[:1] == [first]]
    assert len(found) == 1, f"{first!r} rows: {found}\n" + "\n".join(lines)
    return found[0]


# ---------------------------------------------------------------------------
# Pure parts: rates and the screen budget


def test_rates_never_go_negative() -> None:
    before = {("ARCHIVE", "SUCCEEDED"): 10, ("ARCHIVE", "FAILED"): 4, ("RESTORE", "SUCCEEDED"): 7}
    after = {("ARCHIVE", "SUCCEEDED"): 30, ("ARCHIVE", "FAILED"): 1, ("RESTORE", "SUCCEEDED"): 7,
             ("REMOVE", "CANCELED"): 3}
    r = top.rates(before, after, 2.0)
    assert r[("ARCHIVE", "SUCCEEDED")] == 10.0
    assert r[("ARCHIVE", "FAILED")] is None  # forgotten past max_terminal: unknown, not -1.5/s
    assert r[("RESTORE", "SUCCEEDED")] == 0.0
    assert r[("REMOVE", "CANCELED")] == 1.5
    assert all(v is None for v in top.rates(before, after, 0.0).values())
    # the "all" row of a state is unknown when one kind's is
    state = top.TopState(1.0)
    state.last = top.Poll(0.0, 0.0, cpb.StatusResponse())
    state.rates = r
    lines = strip(_text(top.queues_table(state)))
    assert row(lines, "ARCHIVE")[4:] == ["10.0", "-", "0"]
    assert row(lines, "REMOVE")[4:] == ["0", "0", "1.5"]
    assert row(lines, "all")[4:] == ["10.0", "-", "1.5"]


def test_screen_budget_shares_rows_and_says_how_many_more() -> None:
    assert top.budget(100, [2, 3, 20]) == [2, 3, 20]
    assert top.budget(9, [2, 30, 20]) == [2, 4, 3]
    assert top.budget(2, [4, 4, 4]) == [1, 1, 0]
    assert top.budget(-5, [1, 1]) == [0, 0]
    status = cpb.StatusResponse(agents=[cpb.AgentInfo(agent_id=f"agent{i:02d}", replica="r1")
                                        for i in range(30)])
    lines = strip(_text(top.agents_table(status, time.time(), 5)))
    assert [line.split()[0] for line in lines[2:]] == ["agent00", "agent01", "agent02", "agent03", "..."]
    assert lines[-1].strip() == "... 26 more"


def test_header_shows_an_unanswered_poll_and_keeps_the_last_answer() -> None:
    state = top.TopState(0.5)
    state.add(top.Poll(1000.0, 1.0, error="no coordinator available for status at 127.0.0.1:9"))
    text = _text(*top.header(state, 1001.0))
    assert "coordinator not answering: no coordinator available" in text
    assert "asking again every 0.5s" in text
    state.add(top.Poll(1002.0, 3.0, cpb.StatusResponse(replica="r1", cluster_id="c1", control="enabled")))
    state.add(top.Poll(1004.0, 5.0, error="deadline exceeded"))
    text = _text(*top.header(state, 1010.0))
    assert "cluster c1" in text and "replica r1" in text  # the last answer, still shown
    assert "coordinator not answering: deadline exceeded" in text and "8s ago" in text


def _text(*renderables: Any) -> str:
    from rich.console import Console

    console = Console(width=200, no_color=True, force_terminal=False)
    with console.capture() as cap:
        for r in renderables:
            console.print(r)
    return cap.get()


# ---------------------------------------------------------------------------
# One snapshot when stdout is not a terminal


def test_snapshot_shows_queues_agents_shards_and_the_running_transfer(
        coordinator_factory: Any, tree: Tree, capsys: Any) -> None:
    coordinator = coordinator_factory(shards=2, cluster_id="topcluster")
    small = [tree.add(f"s{i}", 10) for i in range(4)]
    _, big_fid, _ = tree.add("big", 1024 * KiB)
    # one archive at a time, at 64 KiB/s: the big file runs for 16 s, the small ones wait
    cfg = agent_config(coordinator, tree, slots=SlotsConfig(archive=1, restore=1, remove=1),
                       mover={"bandwidth_limit": 64 * KiB, "chunk_size": 16 * KiB})
    with coordinator.client(timeout=10) as client, running_agent(cfg):
        until(lambda: registered(client, "a1"), 10, "agent a1 to register")
        done = submit(client, small[0][1], "archive")
        assert client.wait([done], deadline=20)[done].state == tpb.SUCCEEDED
        big = submit(client, big_fid, "archive")
        until(lambda: client.get_action(big).bytes_done > 0, 10, "progress of the big archive")
        waiting = [submit(client, fid, "archive") for _, fid, _ in small[1:]]
        rc, out, err = hsmctl(capsys, "--coordinators", coordinator.address, *coordinator.args(), "top")
        # still the same picture after the snapshot
        assert client.get_action(big).state == tpb.STARTED
        assert all(client.get_action(i).state == tpb.WAITING for i in waiting)
    assert (rc, err) == (0, ""), err
    lines = strip(out)
    assert "\x1b" not in out  # plain text: no colours, no alternate screen
    assert re.match(r"hsmctl top  cluster topcluster  replica test  version \S+  control enabled  "
                    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", lines[0]), lines[0]
    assert "one snapshot" in lines[1]
    # Queues: 3 waiting, 1 running; rates need two polls
    assert row(lines, "KIND") == ["KIND", "WAITING", "STARTED", "CANCELING", "SUCCEEDED/s", "FAILED/s",
                                  "CANCELED/s"]
    assert row(lines, "ARCHIVE") == ["ARCHIVE", "3", "1", "0", "-", "-", "-"]
    assert row(lines, "RESTORE") == ["RESTORE", "0", "0", "0", "-", "-", "-"]
    assert row(lines, "all") == ["all", "3", "1", "0", "-", "-", "-"]
    # Shards: both led by the one replica, no problem
    assert "Shards (2)" in lines
    assert row(lines, "0") == ["0", "test", "1", row(lines, "0")[3], "leader", "-"]
    assert row(lines, "1")[1:] == ["test", "1", row(lines, "1")[3], "leader", "-"]
    commit, applied = map(int, row(lines, "0")[3].split("/"))
    assert commit >= applied > 0
    # Agents: a1, active, one archive running out of one slot
    assert "Agents (1)" in lines
    a1 = row(lines, "a1")
    assert a1[:2] == ["a1", "active"] and a1[3:6] == ["test", "1/1/1", "1/0/0"], a1
    assert re.fullmatch(r"\d+s", a1[6]) and a1[7] == "ago", a1
    # Transfers: the big archive, with its agent and progress
    assert "Transfers (1 running)" in lines
    t = row(lines, str(big))
    assert t[1:4] == ["ARCHIVE", str(big_fid), "a1"], t
    assert re.fullmatch(r"\d+(\.\d)?(B|KiB|MiB)/1\.0MiB", t[4]) and re.fullmatch(r"\d+%", t[5]), t
    assert "q quit" not in out


def test_rates_from_two_polls_of_a_real_coordinator(coordinator: RunningCoordinator) -> None:
    """fetch() twice around a cancel: the cancels show as CANCELED/s."""
    with coordinator.client(timeout=10) as client:
        results = client.submit(archive_items(1, 3))
        state = top.TopState(0.5)
        state.add(top.fetch(client, 20))
        client.cancel([r.action_id for r in results[:2]])
        state.add(top.fetch(client, 20))
    assert state.polls == 2 and state.error == ""
    assert state.last is not None and state.last.transfers == ()  # nothing runs: nothing listed
    assert state.rates[("ARCHIVE", "CANCELED")] is not None and state.rates[("ARCHIVE", "CANCELED")] > 0
    assert state.rates[("ARCHIVE", "SUCCEEDED")] == 0
    cells = row(strip(_text(top.queues_table(state))), "ARCHIVE")
    assert cells[:4] == ["ARCHIVE", "1", "0", "0"] and cells[4:6] == ["0", "0"], cells
    assert float(cells[6]) > 0, cells


def test_snapshot_of_an_unreachable_coordinator_exits_3(capsys: Any) -> None:
    port = free_ports(1)
    rc, out, err = hsmctl(capsys, "--coordinators", f"127.0.0.1:{port}", "--timeout", "1", "top")
    assert rc == 3 and out == ""
    assert err.startswith("hsmctl top: no coordinator available"), err


def test_interval_must_be_a_positive_number(capsys: Any) -> None:
    for bad in ("0", "-1", "nan", "inf", "soon"):
        rc, _, err = hsmctl(capsys, "top", "--interval", bad)
        assert rc == 2 and f"invalid interval '{bad}': seconds between polls, a number > 0" in err, err
    rc, _, err = hsmctl(capsys, "top", "--transfers", "201")
    assert rc == 2 and "invalid transfers '201'" in err


# ---------------------------------------------------------------------------
# The live view in a real terminal (tmux)


class Pane:
    """One tmux session on a private server: a shell script running
    hsmctl top, then writing its exit status to a file."""

    def __init__(self, socket: str, name: str, workdir: Path, env: dict[str, str],
                 hsmctl_args: list[str]) -> None:
        self.socket, self.name = socket, name
        self.rc_file = workdir / f"{name}.rc"
        self.err_file = workdir / f"{name}.err"
        script = workdir / f"{name}.sh"
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
        command = shlex.join([sys.executable, "-m", "hsmctl.cli", *hsmctl_args])
        script.write_text(
            "#!/bin/sh\n" + exports
            # Ctrl-C goes to the pane's whole process group: the shell
            # survives it (a handler, not SIG_IGN: hsmctl gets the default)
            + "trap 'echo shell-saw-sigint' INT\n"
            + "echo BEFORE-TOP\n"
            + f"{command} 2>{shlex.quote(str(self.err_file))}\n"
            + f"echo $? >{shlex.quote(str(self.rc_file))}.tmp\n"
            + f"mv {shlex.quote(str(self.rc_file))}.tmp {shlex.quote(str(self.rc_file))}\n"
            + f"echo AFTER-TOP rc=$(cat {shlex.quote(str(self.rc_file))})\n"
            + "exec sleep 600\n")
        script.chmod(0o755)
        self.tmux("new-session", "-d", "-s", name, "-x", "160", "-y", "50", str(script))

    def tmux(self, *args: str) -> str:
        env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}
        r = subprocess.run([str(TMUX), "-L", self.socket, "-f", "/dev/null", *args], capture_output=True,
                           text=True, timeout=10, env=env)
        assert r.returncode == 0, f"tmux {args}: {r.stderr}"
        return r.stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.name)

    def alternate(self) -> bool:
        return self.tmux("display-message", "-p", "-t", self.name, "#{alternate_on}").strip() == "1"

    def until(self, cond: Callable[[str], Any], what: str, timeout: float = 30.0) -> str:
        """Poll the screen until *cond(screen)* is true; that screen."""
        last = [""]

        def check() -> bool:
            last[0] = self.screen()
            return bool(cond(last[0]))

        until(check, timeout, lambda: f"{what}; the screen:\n{last[0]}")
        return last[0]

    def exit_status(self, timeout: float = 15.0) -> int:
        until(self.rc_file.exists, timeout, lambda: f"hsmctl top to exit; the screen:\n{self.screen()}")
        return int(self.rc_file.read_text())


@contextmanager
def tmux_server() -> Iterator[str]:
    if TMUX is None:
        pytest.skip("tmux is not installed")
    socket = f"hsmtop-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        yield socket
    finally:
        where = subprocess.run([TMUX, "-L", socket, "display-message", "-p", "#{socket_path}"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        subprocess.run([TMUX, "-L", socket, "kill-server"], capture_output=True, timeout=10)
        if where:  # tmux leaves its socket file behind
            Path(where).unlink(missing_ok=True)


def waiting_archives(screen: str) -> int | None:
    """WAITING in the Queues panel's ARCHIVE row, None before it is drawn."""
    m = re.search(r"^\s*ARCHIVE\s+(\d+)\s+(\d+)\s+(\d+)\s", screen, re.M)
    return int(m.group(1)) if m else None


def top_env(ca: SessionCa) -> dict[str, str]:
    """What the pane's shell exports: the admin's TLS files, no other coordinators or cluster."""
    env = tls_env(ca.files())
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    return env


def archive_items(start: int, n: int) -> list[cpb.SubmitItem]:
    return [submit_item("simfs", Fid(0x200000401, start + i, 0), "archive", 1) for i in range(n)]


@pytest.mark.slow  # about 3 s: two polls time out (--timeout 1) before the coordinator starts
def test_live_view_retries_updates_and_quits_on_q(coordinator_factory: Any, tls_ca: SessionCa,
                                                   tmp_path: Path) -> None:
    port = free_ports(1)
    with tmux_server() as sock:
        pane = Pane(sock, "top", tmp_path, top_env(tls_ca),
                    ["--coordinators", f"127.0.0.1:{port}", "--timeout", "1", "top", "--interval", "0.5"])
        # nobody answers yet: said in the header, and asked again
        pane.until(lambda s: "coordinator not answering" in s and "asking again every 0.5s" in s,
                   "the error in the header")
        assert pane.alternate()
        coordinator: RunningCoordinator = coordinator_factory(api_port=port, cluster_id="live")
        with coordinator.client(timeout=10) as client:
            client.submit(archive_items(1, 2))
            screen = pane.until(lambda s: waiting_archives(s) == 2, "2 waiting archives on screen")
            assert "coordinator not answering" not in screen
            assert re.search(r"^hsmctl top  cluster live  replica test  version \S+  control enabled  "
                             r"\d\d:\d\d:\d\d", screen, re.M), screen
            assert re.search(r"^\s*0\s+test\s+\d+\s+\d+/\d+\s+leader\s+-", screen, re.M), screen
            assert "Agents (0)" in screen and "Transfers (0 running)" in screen
            assert "q quit" in screen
            # it updates: more requests, a new count
            client.submit(archive_items(100, 5))
            pane.until(lambda s: waiting_archives(s) == 7, "7 waiting archives on screen")
            client.control("disabled")
            pane.until(lambda s: "control disabled" in s, "the control mode to change on screen")
        pane.tmux("send-keys", "-t", "top", "q")
        assert pane.exit_status() == 0
        screen = pane.until(lambda s: "AFTER-TOP rc=0" in s, "the shell after hsmctl top")
        # the alternate screen was left: the terminal shows what it showed before
        assert not pane.alternate()
        assert "BEFORE-TOP" in screen and "Queues" not in screen and "ARCHIVE" not in screen, screen
        assert pane.err_file.read_text() == ""


def test_live_view_ends_cleanly_on_ctrl_c(coordinator: RunningCoordinator, tls_ca: SessionCa,
                                          tmp_path: Path) -> None:
    with tmux_server() as sock:
        pane = Pane(sock, "top", tmp_path, top_env(tls_ca),
                    ["--coordinators", coordinator.address, "top", "--interval", "0.5"])
        pane.until(lambda s: waiting_archives(s) == 0 and "replica test" in s, "the view")
        pane.tmux("send-keys", "-t", "top", "C-c")
        assert pane.exit_status() == 0
        screen = pane.until(lambda s: "AFTER-TOP rc=0" in s, "the shell after hsmctl top")
        assert not pane.alternate()
        assert "Traceback" not in screen and "Queues" not in screen, screen
        err = pane.err_file.read_text()
        assert "Traceback" not in err and "interrupted" not in err, err

