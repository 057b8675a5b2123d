"""hsmctl on real simfs trees: lfs-compatible output, exit codes, error
messages; against a real coordinator (and real agentd processes for --wait),
partly as a real subprocess."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.config import ADMIN_CERT
from hsm.client import CoordinatorClient, state_name
from hsm.hsmflags import HS
from hsm.simfs import SimFS
from hsm.tls import TlsFiles
from hsmctl.cli import main
from tests.cluster import Pki, tls_replica

_SCRIPT = Path(sys.executable).parent / "hsmctl"
HSMCTL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "hsmctl.cli"]
AGENTD = Path(sys.executable).parent / "agentd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(*args: str, cwd: Path | None = None, input: str | None = None,
        timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """hsmctl as a real process."""
    env = dict(os.environ)
    env.pop("HSM_COORDINATORS", None)
    return subprocess.run([*HSMCTL, *args], cwd=cwd, input=input, capture_output=True,
                          text=True, timeout=timeout, env=env)


def hsmctl(capsys: Any, *args: str) -> tuple[int, str, str]:
    """hsmctl in this process (fast): (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        rc = main(list(args))
    except SystemExit as e:  # argparse usage errors
        rc = int(e.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def archive_now(fs: SimFS, path: Path, archive_id: int = 1) -> None:
    """Make *path* archived the way an agent does (begin + successful end)."""
    fid = fs.fid_of(path)
    begin = fs.archive_begin(fid, archive_id)
    fs.archive_end(fid, begin.data_version, 0)


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: Any) -> SimFS:
    """A simfs tree 'testfs' at tmp_path/fs with d/new, d/nr, d/arch, d/rel, d/a2;
    the working directory is tmp_path (so relative paths print as given)."""
    fs = SimFS.create(tmp_path / "fs", "testfs")
    d = tmp_path / "fs" / "d"
    d.mkdir()
    for name, size in (("new", 10), ("nr", 20), ("arch", 30), ("rel", 4000), ("a2", 50)):
        (d / name).write_bytes(b"x" * size)
    fs.set_flags(d / "nr", int(HS.NORELEASE), 0)
    archive_now(fs, d / "arch")
    archive_now(fs, d / "rel")
    fs.release(d / "rel")
    archive_now(fs, d / "a2", archive_id=2)
    monkeypatch.chdir(tmp_path)
    return fs


@pytest.fixture
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"), create=True)


@pytest.fixture
def addr(coordinator_factory: Any, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> str:
    """A coordinator with mutual TLS; hsmctl (in this process and as a
    subprocess) presents the admin's certificate, named by HSM_TLS_*."""
    coordinator, _ = tls_replica(coordinator_factory, pki.dir)
    for k, v in pki.env(ADMIN_CERT, {}).items():
        monkeypatch.setenv(k, v)
    return str(coordinator.address)


def actions_of(address: str, **kw: Any) -> list[Any]:
    with CoordinatorClient(address, timeout=5, tls=TlsFiles.from_args(None, None, None)) as c:
        return list(c.list_actions(**kw))


# ---------------------------------------------------------------------------
# Local commands: state, release, set/clear


def test_state_prints_exactly_what_lfs_hsm_state_prints(tree: SimFS) -> None:
    paths = ["fs/d/new", "fs/d/nr", "fs/d/arch", "fs/d/rel", "fs/d/a2"]
    r = run("state", *paths)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout == (
        "fs/d/new: (0x00000000)\n"
        "fs/d/nr: (0x00000010) never_release\n"
        "fs/d/arch: (0x00000009) exists archived, archive_id:1\n"
        "fs/d/rel: (0x0000000d) released exists archived, archive_id:1\n"
        "fs/d/a2: (0x00000009) exists archived, archive_id:2\n"
    )


def test_state_errors_name_the_path_and_set_the_exit_status(tree: SimFS, tmp_path: Path,
                                                            capsys: Any) -> None:
    (tmp_path / "plain").write_text("not in a tree")
    rc, out, err = hsmctl(capsys, "state", "fs/d/new", "fs/d/missing", "fs/d/arch")
    assert rc == 1
    assert out.splitlines() == ["fs/d/new: (0x00000000)",
                                "fs/d/arch: (0x00000009) exists archived, archive_id:1"]
    assert "can't get hsm state for fs/d/missing: No such file or directory" in err
    rc, out, err = hsmctl(capsys, "state", "plain")
    assert rc == 4 and out == ""
    assert "plain: not on a simfs or Lustre file system" in err
    rc, out, err = hsmctl(capsys, "state", "--json", "fs/d/rel", "fs/d/nr")
    assert rc == 0
    assert json.loads(out) == [
        {"path": "fs/d/rel", "fid": str(tree.fid_of("fs/d/rel")), "flags": 0xD,
         "states": ["released", "exists", "archived"], "archive_id": 1, "archived_version": 1},
        {"path": "fs/d/nr", "fid": str(tree.fid_of("fs/d/nr")), "flags": 0x10,
         "states": ["never_release"], "archive_id": 0, "archived_version": 0},
    ]


def test_release_is_local_and_explains_refusals(tree: SimFS, capsys: Any) -> None:
    rc, out, err = hsmctl(capsys, "release", "fs/d/arch")
    assert (rc, out, err) == (0, "", "")
    assert tree.hsm_state("fs/d/arch").flags == HS.EXISTS | HS.ARCHIVED | HS.RELEASED
    assert os.path.getsize("fs/d/arch") == 30
    rc, out, err = hsmctl(capsys, "release", "-v", "fs/d/new", "fs/d/a2", "fs/d/nr")
    assert rc == 1
    assert "fs/d/a2: released" in out
    assert "cannot release 'fs/d/new': the file is not archived (Operation not permitted)" in err
    assert "cannot release 'fs/d/nr': the file is not archived" in err
    tree.set_flags("fs/d/a2", 0, 0)
    archive_now(tree, Path("fs/d/nr"))
    rc, out, err = hsmctl(capsys, "release", "fs/d/nr")
    assert rc == 1 and "the file is marked never_release" in err
    assert not tree.hsm_state("fs/d/nr").flags & HS.RELEASED


def test_set_and_clear_user_flags(tree: SimFS, capsys: Any) -> None:
    rc, _, err = hsmctl(capsys, "set", "--noarchive", "--norelease", "fs/d/new")
    assert rc == 0, err
    rc, out, _ = hsmctl(capsys, "state", "fs/d/new")
    assert out == "fs/d/new: (0x00000030) never_release never_archive\n"
    rc, _, _ = hsmctl(capsys, "clear", "--norelease", "fs/d/new")
    assert tree.hsm_state("fs/d/new").flags == HS.NOARCHIVE
    rc, _, err = hsmctl(capsys, "set", "fs/d/new")
    assert rc == 2 and "give at least one flag" in err
    # DIRTY needs an archived copy (EXISTS): refused, unchanged.
    rc, _, err = hsmctl(capsys, "set", "--dirty", "fs/d/new")
    assert rc == 1 and "can't change hsm flags for fs/d/new" in err
    assert tree.hsm_state("fs/d/new").flags == HS.NOARCHIVE


# ---------------------------------------------------------------------------
# Bad input: clear errors, nothing submitted


@pytest.mark.parametrize(
    "argv, words",
    [
        (["archive", "--fsname", "fs1", "--fid", "0x200000400:0x1"], "malformed FID"),
        (["archive", "--fsname", "fs1", "0x0:0x1:0x0"], "sequence 0"),
        (["archive", "--fid", "[0x200000400:0x1:0x0]"], "--fid needs --fsname"),
        (["archive", "--fsname", "much2long", "--fid", "[0x200000400:0x1:0x0]"], "file system name"),
        (["archive", "-a", "-3", "fs/d/new"], "invalid archive id '-3'"),
        (["archive", "--archive-id", "one", "fs/d/new"], "invalid archive id 'one'"),
        (["restore", "-a", "1", "fs/d/rel"], "unrecognized arguments: -a"),
        (["archive", "--bogus", "fs/d/new"], "unrecognized arguments: --bogus"),
        (["archive", "--data", "novalue", "fs/d/new"], "KEY=VALUE"),
        (["archive", "--batch-size", "0", "fs/d/new"], "batch size"),
        (["archive"], "at least one PATH"),
        (["archive", "-r", "--fsname", "fs1", "0x200000400:0x1:0x0"], "-r walks directories"),
        (["actions", "--kind", "release"], "unknown action kind 'release'"),
        (["actions", "--state", "done"], "unknown action state 'done'"),
        (["cancel", "--id", "-5"], "invalid action id '-5'"),
        (["cancel"], "cancel what?"),
        (["--timeout", "0", "status"], "must be > 0"),
        (["--coordinators", "nohost", "status"], "bad coordinator address 'nohost'"),
    ],
)
def test_usage_errors_exit_2_and_submit_nothing(tree: SimFS, addr: str, capsys: Any,
                                                argv: list[str], words: str) -> None:
    if "--coordinators" not in argv:
        argv = ["--coordinators", addr, *argv]
    rc, out, err = hsmctl(capsys, *argv)
    assert rc == 2
    assert words in err
    assert out == ""
    assert actions_of(addr, include_terminal=True) == []


def test_a_bad_path_stops_the_whole_request(tree: SimFS, addr: str, tmp_path: Path,
                                            capsys: Any) -> None:
    (tmp_path / "plain").write_text("x")
    rc, _, err = hsmctl(capsys, "--coordinators", addr, "archive", "fs/d/new", "fs/d/nope")
    assert rc == 1
    assert "cannot stat 'fs/d/nope': No such file or directory" in err
    assert "nothing submitted" in err
    rc, _, err = hsmctl(capsys, "--coordinators", addr, "archive", "fs/d/new", "plain")
    assert rc == 4 and "plain: not on a simfs or Lustre file system" in err
    rc, _, err = hsmctl(capsys, "--coordinators", addr, "archive", "fs/d")
    assert rc == 1 and "'fs/d' is not a regular file" in err
    assert actions_of(addr, include_terminal=True) == []


def test_unreachable_coordinator_exits_3(tree: SimFS, tmp_path: Path) -> None:
    start = time.monotonic()
    r = run("--coordinators", f"127.0.0.1:{free_port()}", "--timeout", "1",
            "archive", "fs/d/new", cwd=tmp_path)
    assert r.returncode == 3
    assert "no coordinator available" in r.stderr and "connection refused" in r.stderr
    assert time.monotonic() - start < 10
    r = run("--coordinators", f"127.0.0.1:{free_port()}", "--timeout", "1", "status")
    assert r.returncode == 3


def test_help_documents_exit_codes_and_json_keys() -> None:
    r = run("--help")
    assert r.returncode == 0
    for words in ("exit status:", "3  coordinator unreachable", "4  a path is not on a simfs",
                  '"action_id"', '"archive_id"', "HSM_COORDINATORS"):
        assert words in r.stdout


# ---------------------------------------------------------------------------
# Against the coordinator


def test_archive_action_cancel_round_trip(tree: SimFS, addr: str, tmp_path: Path) -> None:
    r = run("--coordinators", addr, "archive", "fs/d/new", "-D", "tag=p1", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    [action] = actions_of(addr)
    fid = tree.fid_of("fs/d/new")
    assert state_name(action.state) == "WAITING" and action.data == b"tag=p1"
    assert action.requesters[0].initiator == f"hsmctl@{socket.gethostname()}"
    assert action.requesters[0].uid == os.getuid()

    r = run("--coordinators", addr, "action", "fs/d/new", "fs/d/arch", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "fs/d/new: ARCHIVE waiting (from 0 to EOF)\nfs/d/arch: NOOP\n"  # lfs hsm_action's line
    r = run("--coordinators", addr, "action", "--queue", "fs/d/new", cwd=tmp_path)
    # no agent: first of one in its queue, no dispatch rate to estimate from
    assert r.stdout == "fs/d/new: ARCHIVE waiting (from 0 to EOF), queue position 1 of 1\n"

    r = run("--coordinators", addr, "actions", cwd=tmp_path)
    header, line = r.stdout.splitlines()
    assert header.split() == ["ID", "KIND", "STATE", "FID", "ARCH", "AGENT", "TRY", "REQ",
                              "PROGRESS", "AGE"]
    assert line.split()[:10] == [str(action.action_id), "ARCHIVE", "waiting", str(fid), "1",
                                 "-", "0", "1", "queue", "1/1"]
    assert re.fullmatch(r"\d+s", line.split()[10])

    r = run("--coordinators", addr, "cancel", "fs/d/new", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    r = run("--coordinators", addr, "action", "--json", "fs/d/new", cwd=tmp_path)
    assert json.loads(r.stdout) == [{
        "path": "fs/d/new", "fid": str(fid), "action": "NOOP", "progress": "",
        "action_id": None, "state": None, "offset": 0, "length": -1, "bytes_moved": 0,
        "queue_position": None, "queue_length": None, "start_estimate": None}]
    r = run("--coordinators", addr, "actions", "--all", "--json", cwd=tmp_path)
    [listed] = json.loads(r.stdout)
    assert listed["state"] == "CANCELED" and listed["kind"] == "ARCHIVE"
    assert listed["fid"] == str(fid) and listed["fsname"] == "testfs"
    assert listed["requesters"][0]["uid"] == os.getuid()


def test_not_needed_is_silent_and_rejected_names_the_path(tree: SimFS, addr: str,
                                                          capsys: Any) -> None:
    rc, out, err = hsmctl(capsys, "--coordinators", addr, "archive", "fs/d/arch")
    assert (rc, out, err) == (0, "", "")
    rc, out, err = hsmctl(capsys, "--coordinators", addr, "restore", "-v", "fs/d/arch")
    assert (rc, err) == (0, "") and out == "fs/d/arch: RESTORE not needed\n"
    tree.set_flags("fs/d/new", int(HS.NOARCHIVE), 0)
    rc, out, err = hsmctl(capsys, "--coordinators", addr, "archive", "fs/d/new", "fs/d/nr")
    assert rc == 1
    assert re.search(r"hsmctl archive: fs/d/new: ARCHIVE refused: .*\(errno EPERM\)", err)
    assert "fs/d/nr" not in err
    # Archived and unchanged: not needed, whatever the archive id (needed comes first).
    rc, _, err = hsmctl(capsys, "--coordinators", addr, "archive", "-a", "2", "fs/d/arch")
    assert (rc, err) == (0, "")
    # Changed since: needed, but archive 2 for a file that exists in 1 is not allowed.
    tree.set_flags("fs/d/arch", int(HS.DIRTY), 0)
    rc, _, err = hsmctl(capsys, "--coordinators", addr, "archive", "-a", "2", "fs/d/arch")
    assert rc == 1 and "fs/d/arch: ARCHIVE refused" in err
    assert [a.fid.oid for a in actions_of(addr)] == [tree.fid_of("fs/d/nr").oid]


def test_remove_and_fid_operands(tree: SimFS, addr: str, capsys: Any) -> None:
    fid = tree.fid_of("fs/d/a2")
    rc, out, err = hsmctl(capsys, "--coordinators", addr, "remove", "-v", "-m", "fs", str(fid))
    assert rc == 0, err
    assert re.fullmatch(rf"{re.escape(str(fid))}: REMOVE queued as action \d+\n", out)
    [action] = actions_of(addr)
    assert action.archive_id == 2  # the file's own, read through --mntpath
    # A released file's copy holds its only data: REMOVE is refused.
    rc, _, err = hsmctl(capsys, "--coordinators", addr, "remove", "fs/d/rel")
    assert rc == 1 and "fs/d/rel: REMOVE refused" in err
    # --fsname alone: no HSM state to check, queued as asked.
    rc, _, err = hsmctl(capsys, "--coordinators", addr, "restore", "--fsname", "other",
                        "--fid", "[0x200000400:0x99:0x0]")
    assert rc == 0, err
    assert {a.fsname for a in actions_of(addr)} == {"testfs", "other"}


def test_restore_tree_summary_and_dedup(tree: SimFS, addr: str, capsys: Any) -> None:
    tree.release("fs/d/a2")
    (Path("fs/d/sub")).mkdir()
    (Path("fs/d/sub/late")).write_bytes(b"y")
    rc, out, err = hsmctl(capsys, "--coordinators", addr, "restore", "-r", "--batch-size", "2",
                          "fs/d")
    assert (rc, err) == (0, "")
    assert out == "queued 2, joined 0, not needed 4, rejected 0\n"
    restores = actions_of(addr)
    assert sorted(a.fid.oid for a in restores) == sorted(
        tree.fid_of(p).oid for p in ("fs/d/rel", "fs/d/a2"))
    # Again (another request, new keys): joins the queued restores.
    rc, out, _ = hsmctl(capsys, "--coordinators", addr, "restore", "-r", "fs/d")
    assert out == "queued 0, joined 2, not needed 4, rejected 0\n"
    assert all(len(a.requesters) == 2 for a in actions_of(addr))
    rc, out, err = hsmctl(capsys, "--coordinators", addr, "restore", "-r", "fs/nowhere")
    assert rc == 1 and out == "queued 0, joined 0, not needed 0, rejected 0, errors 1\n"
    assert "cannot stat 'fs/nowhere'" in err


def test_filelist_is_submitted_while_it_is_read(tree: SimFS, addr: str, tmp_path: Path) -> None:
    tree.release("fs/d/arch")
    proc = subprocess.Popen(
        [*HSMCTL, "--coordinators", addr, "restore", "--batch-size", "1", "--filelist", "-"],
        cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write("fs/d/rel\n")
        proc.stdin.flush()
        # Queued before the list is complete.
        wait_for(lambda: len(actions_of(addr)) == 1, what="the first restore")
        proc.stdin.write("fs/d/arch\n\nfs/d/missing\nfs/d/new\n")
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert out == "queued 2, joined 0, not needed 1, rejected 0, errors 1\n"
    assert "cannot stat 'fs/d/missing'" in err
    assert len(actions_of(addr)) == 2


def test_cancel_by_id_and_all(tree: SimFS, addr: str, capsys: Any) -> None:
    tree.release("fs/d/arch")
    rc, _, _ = hsmctl(capsys, "--coordinators", addr, "restore", "fs/d/rel", "fs/d/arch")
    ids = [a.action_id for a in actions_of(addr)]
    rc, out, err = hsmctl(capsys, "--coordinators", addr, "cancel", "-v", "--id", str(ids[0]),
                          "--id", "424242")
    assert rc == 1
    assert out == f"action {ids[0]}: canceled\n"
    assert "action 424242: no such action" in err
    rc, out, err = hsmctl(capsys, "--coordinators", addr, "cancel", "--all")
    assert (rc, out, err) == (0, "", "")
    assert actions_of(addr) == []


def test_status_agents_and_json(tree: SimFS, addr: str, capsys: Any, monkeypatch: Any) -> None:
    hsmctl(capsys, "--coordinators", addr, "archive", "fs/d/new", "fs/d/nr")
    r = run("--coordinators", addr, "status")
    assert r.returncode == 0, r.stderr
    assert "control enabled" in r.stdout and "answered by test" in r.stdout
    queue = next(line for line in r.stdout.splitlines() if line.startswith("ARCHIVE"))
    assert queue.split() == ["ARCHIVE", "2", "0", "0", "0", "0", "0", "2"]
    assert "Agents (0)" in r.stdout and "Shards (" in r.stdout
    rc, out, _ = hsmctl(capsys, "--coordinators", addr, "status", "--json")
    doc = json.loads(out)
    assert {"replica", "version", "control", "counts", "agents", "shards", "replicas"} <= set(doc)
    assert {"kind": "ARCHIVE", "state": "WAITING", "count": 2} in doc["counts"]
    assert doc["shards"][0]["leader"] == "test"
    assert doc["shards"][0]["leader_address"] == addr
    # The address may come from the environment; the option wins over it.
    monkeypatch.setenv("HSM_COORDINATORS", addr)
    rc, out, _ = hsmctl(capsys, "agents", "--json")
    assert (rc, json.loads(out)) == (0, [])
    monkeypatch.setenv("HSM_COORDINATORS", f"127.0.0.1:{free_port()}")
    rc, out, _ = hsmctl(capsys, "agents", "--coordinators", addr)
    assert rc == 0 and out.startswith("Agents (0)")
    rc, out, _ = hsmctl(capsys, "--coordinators", addr, "actions", "--kind", "restore")
    assert (rc, out) == (0, "")


# ---------------------------------------------------------------------------
# --wait, with real agentd processes


@pytest.fixture
def agentd(tmp_path: Path, addr: str, pki: Pki) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*extra: str, agent_id: str = "a1") -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"agentd-{agent_id}.log", "wb")  # noqa: SIM115
        pki.issue(agent_id, "agent")  # its own certificate (the flags override HSM_TLS_*)
        p = subprocess.Popen(
            [str(AGENTD), "--coordinators", addr, "--fs-root", str(tmp_path / "fs"),
             "--agent-id", agent_id, *pki.args(agent_id), "--log-level", "DEBUG", *extra],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        procs.append(p)

        def registered() -> bool:
            if p.poll() is not None:
                raise AssertionError(
                    "agentd exited: " + (tmp_path / f"agentd-{agent_id}.log").read_text())
            with CoordinatorClient(addr, timeout=5, tls=pki.files(ADMIN_CERT)) as c:
                return any(a.agent_id == agent_id for a in c.status().agents)

        wait_for(registered, timeout=15, what=f"agentd {agent_id} to connect")
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.mark.skipif(not AGENTD.exists(), reason="agentd console script not installed")
def test_wait_archive_then_restore_with_agentd(tree: SimFS, addr: str, tmp_path: Path,
                                               agentd: Any) -> None:
    (tmp_path / "archive").mkdir()
    agentd("--archive-root", str(tmp_path / "archive"))
    Path("fs/e/sub").mkdir(parents=True)
    data = {"fs/e/one": b"first " * 1000, "fs/e/sub/two": b"second " * 3000}
    for path, content in data.items():
        Path(path).write_bytes(content)
    r = run("--coordinators", addr, "archive", "--wait", *data, cwd=tmp_path, timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    r = run("--coordinators", addr, "state", *data, cwd=tmp_path)
    assert r.stdout == ("fs/e/one: (0x00000009) exists archived, archive_id:1\n"
                        "fs/e/sub/two: (0x00000009) exists archived, archive_id:1\n")
    r = run("--coordinators", addr, "release", *data, cwd=tmp_path)
    assert r.returncode == 0 and os.path.getsize("fs/e/sub/two") == 21000
    r = run("--coordinators", addr, "restore", "-r", "--wait", "-v", "fs/e", cwd=tmp_path,
            timeout=30)
    assert (r.returncode, r.stderr) == (0, "")
    lines = r.stdout.splitlines()
    assert lines[2] == "queued 2, joined 0, not needed 0, rejected 0"
    assert lines[-1] == "succeeded 2, failed 0, canceled 0"
    assert any(re.fullmatch(r"fs/e/sub/two: RESTORE queued as action \d+", x) for x in lines)
    assert any(re.fullmatch(r"fs/e/one: RESTORE succeeded \(action \d+\)", x) for x in lines)
    for path, content in data.items():
        assert Path(path).read_bytes() == content


@pytest.mark.skipif(not AGENTD.exists(), reason="agentd console script not installed")
def test_wait_reports_failed_and_canceled_actions(tree: SimFS, addr: str, tmp_path: Path,
                                                  agentd: Any) -> None:
    # A mover command that fails with ENOSPC (exit status = errno).
    agentd("--mover", "command", "--archive-cmd", "sh -c 'exit 28'", "--slots",
           "restore=0,remove=0")
    r = run("--coordinators", addr, "archive", "--wait", "fs/d/new", cwd=tmp_path, timeout=30)
    assert r.returncode == 1
    assert re.search(r"fs/d/new: ARCHIVE action \d+ failed: .*ENOSPC", r.stderr), r.stderr


@pytest.mark.skipif(not AGENTD.exists(), reason="agentd console script not installed")
def test_action_shows_running_and_cancel_ends_the_wait(tree: SimFS, addr: str, tmp_path: Path,
                                                       agentd: Any) -> None:
    (tmp_path / "archive").mkdir()
    agentd("--archive-root", str(tmp_path / "archive"), "--bandwidth-limit", "256K")
    Path("fs/d/new").write_bytes(os.urandom(4 * 1024 * 1024))
    waiter = subprocess.Popen(
        [*HSMCTL, "--coordinators", addr, "archive", "--wait", "fs/d/new"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        def running() -> str:
            r = run("--coordinators", addr, "action", "fs/d/new", cwd=tmp_path)
            return r.stdout if "running" in r.stdout else ""

        line = wait_for(running, timeout=15, what="the archive to run")
        assert re.fullmatch(r"fs/d/new: ARCHIVE running \(\d+ bytes moved\)\n", line)
        r = run("--coordinators", addr, "cancel", "-v", "fs/d/new", cwd=tmp_path)
        assert r.returncode == 0 and "canceling" in r.stdout
        out, err = waiter.communicate(timeout=20)
    finally:
        waiter.kill()
    assert waiter.returncode == 1
    assert re.search(r"fs/d/new: ARCHIVE action \d+ was canceled", err), err
    assert not tree.hsm_state("fs/d/new").flags & HS.ARCHIVED


def test_control_command(addr: str) -> None:
    assert run("--coordinators", addr, "control").stdout == "enabled\n"
    r = run("--coordinators", addr, "control", "disabled")
    assert r.returncode == 0 and r.stdout == "disabled\n", r.stderr
    r = run("--coordinators", addr, "status")
    assert "control disabled" in r.stdout
    r = run("--coordinators", addr, "control", "paused")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    assert run("--coordinators", addr, "control", "enabled").stdout == "enabled\n"
