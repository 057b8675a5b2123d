"""hsmctl as a new admin meets it (issue 10): --version, symbolic links as
lfs treats them, cancel --id next to paths, --json on every listing
command, NUL-separated file lists, odd bytes in file names, and the
--wait progress label. Real simfs trees, a real coordinator, hsmctl as a
real process where the output streams matter, real agentd for --wait."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import hsm
from hsm.client import state_name
from hsm.hsmflags import HS
from hsm.simfs import SimFS
from tests import test_hsmctl as base
from tests.test_hsmctl import AGENTD, HSMCTL, actions_of, archive_now, hsmctl, run, wait_for

# The fixtures of test_hsmctl: a simfs tree (cwd: its parent), a coordinator, agentd.
tree = base.tree
pki = base.pki
addr = base.addr
agentd = base.agentd

BIN = Path(sys.executable).parent


def run_bytes(*args: str | bytes, cwd: Path, input: bytes | None = None,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """hsmctl as a real process, arguments and output as raw bytes."""
    full_env = {k: v for k, v in os.environ.items() if k != "HSM_COORDINATORS"}
    full_env.update(env or {})
    return subprocess.run([*HSMCTL, *args], cwd=cwd, input=input, capture_output=True,
                          timeout=30, env=full_env)


# ---------------------------------------------------------------------------
# 5. --version


def test_version_is_printed_like_the_daemons() -> None:
    r = run("--version")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"hsmctl {hsm.__version__}\n", "")
    for daemon in ("agentd", "hsm-coordinator"):
        exe = BIN / daemon
        if exe.exists():
            d = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=30)
            assert d.stdout == f"{daemon} {hsm.__version__}\n"


# ---------------------------------------------------------------------------
# 6. Symbolic links: what lfs does


@pytest.fixture
def links(tree: SimFS, tmp_path: Path) -> dict[str, str]:
    """fs/d/L-<target> -> a file of the tree, fs/d/dangle -> nothing,
    fs/d/out -> a file outside the tree."""
    (tmp_path / "plain").write_text("outside")
    for target in ("new", "rel", "arch"):
        os.symlink(target, f"fs/d/L-{target}")
    os.symlink("gone", "fs/d/dangle")
    os.symlink(str(tmp_path / "plain"), "fs/d/out")
    return {"dangle": "fs/d/dangle", "out": "fs/d/out"}


def test_state_set_clear_follow_symlinks_like_lfs(tree: SimFS, links: dict[str, str],
                                                  capsys: Any) -> None:
    # lfs hsm_state / hsm_set / hsm_clear open() the path: the link's file.
    rc, out, err = hsmctl(capsys, "state", "fs/d/L-rel")
    assert (rc, out, err) == (0, "fs/d/L-rel: (0x0000000d) released exists archived, archive_id:1\n", "")
    rc, out, err = hsmctl(capsys, "set", "--norelease", "fs/d/L-new")
    assert (rc, out, err) == (0, "", "")
    assert tree.hsm_state("fs/d/new").flags == HS.NORELEASE
    assert os.path.islink("fs/d/L-new")
    rc, out, err = hsmctl(capsys, "clear", "--norelease", "fs/d/L-new")
    assert (rc, err) == (0, "") and tree.hsm_state("fs/d/new").flags == 0
    for argv, failed in ((["state"], "can't get hsm state for"),
                         (["set", "--dirty"], "can't change hsm flags for"),
                         (["clear", "--dirty"], "can't change hsm flags for")):
        rc, out, err = hsmctl(capsys, *argv, links["dangle"])
        assert (rc, out) == (1, ""), argv
        assert f"{failed} fs/d/dangle: No such file or directory" in err
        rc, out, err = hsmctl(capsys, *argv, links["out"])
        assert (rc, out) == (4, ""), argv
        assert "fs/d/out: not on a simfs or Lustre file system" in err


def test_action_follows_symlinks_like_lfs(tree: SimFS, links: dict[str, str], addr: str,
                                          capsys: Any) -> None:
    rc, _, err = hsmctl(capsys, "--coordinators", addr, "archive", "fs/d/new")
    assert rc == 0, err
    rc, out, err = hsmctl(capsys, "--coordinators", addr, "action", "fs/d/L-new", "fs/d/L-arch")
    assert (rc, err) == (0, "")
    assert out == "fs/d/L-new: ARCHIVE waiting (from 0 to EOF)\nfs/d/L-arch: NOOP\n"
    rc, out, err = hsmctl(capsys, "--coordinators", addr, "action", links["dangle"])
    assert (rc, out) == (1, "") and "can't get hsm action for fs/d/dangle: No such file" in err
    rc, out, err = hsmctl(capsys, "--coordinators", addr, "action", links["out"])
    assert (rc, out) == (4, "") and "fs/d/out: not on a simfs or Lustre file system" in err


@pytest.mark.parametrize("command, target", [
    ("archive", "new"), ("restore", "rel"), ("remove", "arch"), ("release", "arch"), ("cancel", "new"),
])
def test_requests_refuse_symlinks_like_lfs(tree: SimFS, links: dict[str, str], addr: str,
                                           capsys: Any, command: str, target: str) -> None:
    # lfs hsm_archive/restore/release/remove/cancel lstat() each path and
    # refuse what is not a regular file, before sending anything.
    if command == "cancel":
        hsmctl(capsys, "--coordinators", addr, "archive", "fs/d/new")
    before = [(a.action_id, a.state) for a in actions_of(addr, include_terminal=True)]
    flags = tree.hsm_state(f"fs/d/{target}").flags
    for link in (f"fs/d/L-{target}", links["dangle"], links["out"]):
        rc, out, err = hsmctl(capsys, "--coordinators", addr, command, link)
        assert (rc, out) == (1, ""), (command, link, err)
        assert f"'{link}' is not a regular file (a symbolic link;" in err
        if command in ("archive", "restore", "remove"):
            assert "nothing submitted" in err
        if command == "cancel":
            assert "nothing canceled" in err
    assert [(a.action_id, a.state) for a in actions_of(addr, include_terminal=True)] == before
    assert tree.hsm_state(f"fs/d/{target}").flags == flags
    # The target itself is accepted: the refusal is about the link.
    rc, _, err = hsmctl(capsys, "--coordinators", addr, command, f"fs/d/{target}")
    assert (rc, err) == (0, "")


def test_filelist_and_walk_treat_symlinks_as_operands_do(tree: SimFS, links: dict[str, str],
                                                         addr: str, tmp_path: Path,
                                                         capsys: Any) -> None:
    Path("list").write_text("fs/d/L-rel\nfs/d/dangle\nfs/d/out\nfs/d/rel\n")
    rc, out, err = hsmctl(capsys, "--coordinators", addr, "restore", "--filelist", "list")
    assert rc == 1
    assert out == "queued 1, joined 0, not needed 0, rejected 0, errors 3\n"
    for link in ("fs/d/L-rel", "fs/d/dangle", "fs/d/out"):
        assert f"'{link}' is not a regular file (a symbolic link;" in err
    # -r: links met in the walk are skipped (find -P -type f), one given as the top is refused.
    Path("fs/d/sub").mkdir()
    os.symlink("../rel", "fs/d/sub/L-rel")
    os.symlink("..", "fs/d/sub/L-dir")
    rc, out, err = hsmctl(capsys, "--coordinators", addr, "restore", "-r", "fs/d/sub", "fs/d")
    assert (rc, err) == (0, "")
    assert out == "queued 0, joined 1, not needed 4, rejected 0\n"
    rc, out, err = hsmctl(capsys, "--coordinators", addr, "restore", "-r", "fs/d/sub/L-dir")
    assert rc == 1 and "'fs/d/sub/L-dir' is not a regular file (a symbolic link;" in err
    # simfs's .lustre/fid/FID entries are links, but on Lustre they are the file: accepted.
    fid = tree.fid_of("fs/d/new")
    rc, out, err = hsmctl(capsys, "--coordinators", addr, "archive", "-v",
                          f"fs/.lustre/fid/{str(fid)[1:-1]}")
    assert (rc, err) == (0, "") and "ARCHIVE queued as action" in out
    assert sorted(a.fid.oid for a in actions_of(addr)) == sorted(
        tree.fid_of(p).oid for p in ("fs/d/rel", "fs/d/new"))


# ---------------------------------------------------------------------------
# 7. cancel --id next to paths


def test_cancel_id_then_paths_and_id_lists(tree: SimFS, addr: str, capsys: Any) -> None:
    tree.release("fs/d/arch")
    tree.release("fs/d/a2")
    rc, _, err = hsmctl(capsys, "--coordinators", addr, "restore", "fs/d/rel", "fs/d/arch", "fs/d/a2")
    assert rc == 0, err
    ids = {a.fid.oid: a.action_id for a in actions_of(addr)}
    rel, arch, a2 = (ids[tree.fid_of(p).oid] for p in ("fs/d/rel", "fs/d/arch", "fs/d/a2"))
    # The id, then a path: each read as what it is.
    rc, out, err = hsmctl(capsys, "--coordinators", addr, "cancel", "-v", "--id", str(rel), "fs/d/arch")
    assert (rc, err) == (0, "")
    assert sorted(out.splitlines()) == sorted([f"action {rel}: canceled", f"action {arch}: canceled"])
    # A path where an id was expected, or an id where a path was: said so, nothing canceled.
    rc, out, err = hsmctl(capsys, "--coordinators", addr, "cancel", "--id", "fs/d/a2")
    assert (rc, out) == (2, "")
    assert "invalid action id 'fs/d/a2': that is a file, not an action id" in err
    rc, out, err = hsmctl(capsys, "--coordinators", addr, "cancel", "--id", str(rel), str(a2))
    assert (rc, out) == (1, "")
    assert f"cannot stat '{a2}': No such file or directory (an action id? give it with --id {a2})" in err
    assert "nothing canceled" in err
    assert [a.action_id for a in actions_of(addr)] == [a2]
    # Comma-separated lists.
    rc, out, err = hsmctl(capsys, "--coordinators", addr, "cancel", "-v", "--id", f"{a2},424242")
    assert rc == 1 and out == f"action {a2}: canceled\n"
    assert "action 424242: no such action" in err
    assert actions_of(addr) == []


# ---------------------------------------------------------------------------
# 8. --json on every listing and reporting command

LISTING = {
    "status": ["status"], "agents": ["agents"], "actions": ["actions"],
    "state": ["state", "fs/d/arch"], "action": ["action", "fs/d/arch"], "control": ["control"],
    "agent": ["agent", "drain", "ghost", "--force"],
}


@pytest.mark.parametrize("name", sorted(LISTING))
def test_every_listing_command_takes_json(tree: SimFS, addr: str, capsys: Any, name: str) -> None:
    rc, out, err = hsmctl(capsys, "--coordinators", addr, *LISTING[name], "--json")
    assert (rc, err) == (0, ""), err
    json.loads(out)
    r = run("--help")
    assert re.search(rf"^  {name} ", r.stdout.split("--json output")[1], re.M), \
        f"hsmctl --help documents no JSON keys for {name}"


def test_control_and_agent_json(addr: str, capsys: Any) -> None:
    rc, out, _ = hsmctl(capsys, "--coordinators", addr, "control", "--json")
    assert (rc, json.loads(out)) == (0, {"control": "enabled"})
    rc, out, _ = hsmctl(capsys, "--coordinators", addr, "control", "disabled", "--json")
    assert (rc, json.loads(out)) == (0, {"control": "disabled"})
    rc, out, _ = hsmctl(capsys, "--coordinators", addr, "control")
    assert out == "disabled\n"
    rc, out, _ = hsmctl(capsys, "--coordinators", addr, "agent", "drain", "ghost", "--force", "--json")
    idle = {"archive": 0, "restore": 0, "remove": 0}
    assert (rc, json.loads(out)) == (0, {"agent_id": "ghost", "state": "drained", "draining": True,
                                         "running": idle})
    rc, out, _ = hsmctl(capsys, "--coordinators", addr, "agent", "resume", "ghost", "--json")
    assert (rc, json.loads(out)) == (0, {"agent_id": "ghost", "state": "active", "draining": False,
                                         "running": idle})


# ---------------------------------------------------------------------------
# 9. NUL-separated file lists; odd bytes in names


def test_filelist_null_separated_carries_newlines(tree: SimFS, addr: str, tmp_path: Path,
                                                  capsys: Any) -> None:
    odd = "fs/d/two\nlines"
    Path(odd).write_bytes(b"z" * 100)
    archive_now(tree, Path(odd))
    tree.release(odd)
    Path("list0").write_bytes(f"{odd}\0fs/d/rel\0".encode())
    rc, out, err = hsmctl(capsys, "--coordinators", addr, "restore", "-0", "--filelist", "list0")
    assert (rc, err) == (0, "")
    assert out == "queued 2, joined 0, not needed 0, rejected 0\n"
    assert sorted(a.fid.oid for a in actions_of(addr)) == sorted(
        tree.fid_of(p).oid for p in (odd, "fs/d/rel"))
    rc, _, _ = hsmctl(capsys, "--coordinators", addr, "cancel", "--all")
    # The same list read by lines: an error naming the remedy, not a crash.
    rc, out, err = hsmctl(capsys, "--coordinators", addr, "restore", "--filelist", "list0")
    assert rc == 1 and out.endswith("errors 2\n")  # "fs/d/two", then "lines<NUL>fs/d/rel<NUL>"
    assert "cannot stat 'fs/d/two': No such file or directory" in err
    assert "cannot stat 'lines\\x00fs/d/rel\\x00'" in err
    assert "a file name cannot hold a NUL byte (for a NUL-separated --filelist, give -0)" in err
    # From stdin, submitted while it is read (find -print0 | hsmctl ... --null --filelist -).
    proc = subprocess.Popen(
        [*HSMCTL, "--coordinators", addr, "restore", "--null", "--batch-size", "1", "--filelist", "-"],
        cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdin is not None
        proc.stdin.write(odd.encode() + b"\0")
        proc.stdin.flush()
        wait_for(lambda: len(actions_of(addr)) == 1, what="the first restore, before the list ended")
        proc.stdin.write(b"fs/d/missing\0fs/d/rel")  # the last name needs no NUL
        out_b, err_b = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert out_b == b"queued 2, joined 0, not needed 0, rejected 0, errors 1\n"
    assert b"cannot stat 'fs/d/missing'" in err_b
    rc, _, err = hsmctl(capsys, "--coordinators", addr, "restore", "-0", "fs/d/rel")
    assert rc == 2 and "give --filelist FILE too" in err


def test_odd_bytes_in_names_print_the_same_everywhere(tree: SimFS, addr: str,
                                                      tmp_path: Path) -> None:
    bad = b"fs/d/bad\xffname"
    Path(os.fsdecode(bad)).write_bytes(b"x")
    tree.set_flags(os.fsdecode(bad), int(HS.NOARCHIVE), 0)
    Path("fs/d/tab\tname").write_bytes(b"y")
    shown = rb"fs/d/bad\xffname"
    # Printed by state, whatever the locale's error handler ...
    for env in ({}, {"PYTHONIOENCODING": "utf-8:strict"}):
        r = run_bytes("state", bad, b"fs/d/bad\xffgone", cwd=tmp_path, env=env)
        assert r.returncode == 1, r.stderr
        assert r.stdout == shown + b": (0x00000020) never_archive\n"
        assert r.stderr == b"hsmctl state: can't get hsm state for fs/d/bad\\xffgone: " \
                           b"No such file or directory\n"
    r = run_bytes("state", "--json", bad, cwd=tmp_path)
    assert json.loads(r.stdout)[0]["path"] == shown.decode()
    # ... in the errors of a -r walk, and in -v lines: the same escapes.
    r = run_bytes("--coordinators", addr, "archive", "-v", "-r", "fs/d", cwd=tmp_path)
    assert r.returncode == 1
    assert b"hsmctl archive: " + shown + b": ARCHIVE refused" in r.stderr
    assert re.search(rb"^fs/d/tab\\tname: ARCHIVE queued as action \d+$", r.stdout, re.M), r.stdout
    r = run_bytes("--coordinators", addr, "archive", b"fs/d/bad\xffnone", cwd=tmp_path)
    assert b"cannot stat 'fs/d/bad\\xffnone': No such file or directory" in r.stderr


# ---------------------------------------------------------------------------
# 10. The --wait progress label


@pytest.mark.skipif(not AGENTD.exists(), reason="agentd console script not installed")
def test_wait_progress_label_says_waiting_running_done(tree: SimFS, addr: str, tmp_path: Path,
                                                       agentd: Any) -> None:
    (tmp_path / "archive").mkdir()
    agentd("--archive-root", str(tmp_path / "archive"), "--bandwidth-limit", "256K",
           "--slots", "archive=1,restore=0,remove=0")
    Path("fs/d/big").write_bytes(os.urandom(512 * 1024))
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "HSM_COORDINATORS"}
    env.update(COLUMNS="200", TERM="xterm")
    proc = subprocess.Popen([*HSMCTL, "--coordinators", addr, "archive", "--wait", "fs/d/big", "fs/d/new"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the process closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        out, _ = proc.communicate(timeout=60)
        reader.join(10)
    finally:
        proc.kill()
        os.close(master)
    screen = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", b"".join(chunks)).decode(errors="replace")
    assert proc.returncode == 0, screen
    # One action runs (one archive slot) while the other waits or is done ...
    assert re.search(r"archive: [01] waiting, 1 running, [01] done", screen), screen
    # ... and at the end both are done.
    assert "archive: 0 waiting, 0 running, 2 done" in screen, screen
    assert "archive waiting" not in screen
    assert {state_name(a.state) for a in actions_of(addr, include_terminal=True)} == {"SUCCEEDED"}


def test_help_says_where_the_mdt_hsm_tunables_live() -> None:
    """An admin used to lctl get_param mdt.*.hsm.* finds each tunable."""
    r = subprocess.run([*HSMCTL, "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    for lustre, here in (("max_requests", "--slots"), ("active_request_timeout", "progress_timeout"),
                         ("grace_delay", "max_terminal"), ("policy", "max_attempts")):
        section = r.stdout.split("from lctl get_param", 1)[1]  # (a command is named policy too)
        line = next((ln for ln in section.splitlines() if ln.strip().startswith(lustre)), "")
        assert here in line, f"hsmctl --help does not say where {lustre} lives"
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("#### Coming from `lctl get_param mdt.*.hsm.*`", 1)[1].split("###", 1)[0]
    assert all(f"`{name}`" in table or f"`{name} " in table
               for name in ("max_requests", "active_request_timeout", "grace_delay", "policy"))
