"""hsm-spaced with real components: a real coordinator (one replica, real
Raft and gRPC with mutual TLS on 127.0.0.1), a real agentd (posix mover)
on a real simfs tree, the hsm-spaced process and the hsmctl process.

A full tree of archived-clean, dirty, unarchived, never_release and
never_archive files goes below the low watermark without a dirty,
unarchived or never_release file released, archiving the least recently
used files first when the candidates run out; the daemon follows the tree
with inotify and the event log (no rescan); the status file and hsmctl
space; bad options; SIGTERM."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agentd.movers.posix import object_path
from hsm.client import CoordinatorClient, submit_item
from hsm.hsmflags import HS
from hsm.simfs import SimFS
from hsm.v1 import types_pb2 as tpb
from spaced import status_path
from spaced.cli import main as spaced_main
from spaced.cli import parse_size
from spaced.daemon import Settings, SpaceDaemon
from tests.cluster import until
from tests.test_agentd import Tree, agent_config, registered, running_agent

KiB = 1024
SIZE = 64 * KiB
DAY = 86400.0
CLEAN = int(HS.EXISTS | HS.ARCHIVED)


@dataclass
class Rig:
    coordinator: Any
    client: CoordinatorClient
    fs: SimFS
    archive: Path
    tmp: Path

    @property
    def root(self) -> Path:
        return Path(self.fs.root)

    def env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith("HSM_")}

    def spaced_args(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "spaced.cli", str(self.root), "--coordinators", self.coordinator.address,
                *self.coordinator.args(), *args]

    def spaced(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.spaced_args(*args), env=self.env(), capture_output=True, text=True, timeout=120)

    def archive_files(self, paths: list[Path]) -> None:
        items = [submit_item(self.fs.fsname, self.fs.fid_of(p), "archive", 1) for p in paths]
        ids = [r.action_id for r in self.client.submit(items)]
        done = self.client.wait(ids, deadline=60)
        assert all(done[i].state == tpb.SUCCEEDED for i in ids), done

    def flags(self, p: Path) -> int:
        return int(self.fs.hsm_state(p).flags)

    def status(self) -> dict[str, Any]:
        try:
            doc: dict[str, Any] = json.loads(status_path(self.root).read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return doc


@pytest.fixture
def rig(coordinator: Any, tmp_path: Path) -> Iterator[Rig]:
    fs = SimFS.create(tmp_path / "fs", fsname="simfs")
    archive = tmp_path / "archive"
    archive.mkdir()
    with coordinator.client(timeout=20) as client, running_agent(agent_config(coordinator, Tree(fs, archive))):
        until(lambda: registered(client, "a1"), 20, "agent a1 to register")
        yield Rig(coordinator, client, fs, archive, tmp_path)


def write(p: Path, when: float, size: int = SIZE) -> bytes:
    """A file of *size* random bytes, last used (atime and mtime) at *when*."""
    p.parent.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    p.write_bytes(data)
    os.utime(p, (when, when))
    return data


def put_atime_back(p: Path, when: float) -> None:
    """The mover's read moved the atime: put it back, leaving the mtime (and
    so simfs's view of the data) untouched."""
    os.utime(p, ns=(int(when * 1e9), os.stat(p).st_mtime_ns))


def blocks(p: Path) -> int:
    return os.stat(p).st_blocks * 512


def hsmctl(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HSM_")}
    return subprocess.run([sys.executable, "-m", "hsmctl.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


# ---------------------------------------------------------------------------


def test_a_full_tree_goes_below_low_without_releasing_a_dirty_unarchived_or_norelease_file(rig: Rig) -> None:
    root = rig.root
    base = time.time() - 30 * DAY
    data: dict[str, bytes] = {}
    last_use: dict[str, float] = {}

    def add(name: str, when: float) -> Path:
        data[name] = write(root / name, when)
        last_use[name] = when
        return root / name

    clean = [add(f"clean/{i}", base + 100 + i) for i in range(8)]
    keep = [add(f"keep/{i}", base + i) for i in range(2)]  # never_release: the least recently used of all
    dirty = [add(f"dirty/{i}", base + 50) for i in range(3)]  # archived, then written
    new = [add(f"new/{i}", base + 10 + 2 * i) for i in range(5)]  # never archived: 10, 12, 14, 16, 18
    noarchive = add("noarchive", base + 5)
    rig.archive_files(clean + keep + dirty)
    for p in clean + keep:
        put_atime_back(p, last_use[rel(root, p)])
    for p in keep:
        rig.fs.set_flags(p, set=HS.NORELEASE)
    for i, p in enumerate(dirty):  # written since archived, last used at 11, 13, 15
        add(rel(root, p), base + 11 + 2 * i)
    rig.fs.set_flags(noarchive, set=HS.NOARCHIVE)
    assert {rig.flags(p) for p in clean} == {CLEAN}
    assert {rig.flags(p) for p in dirty} == {CLEAN | int(HS.DIRTY)}
    assert {rig.flags(p) for p in keep} == {CLEAN | int(HS.NORELEASE)}
    assert {rig.flags(p) for p in new} == {0}
    everything = clean + keep + dirty + new + [noarchive]
    assert len({blocks(p) for p in everything}) == 1, "every file holds the same blocks"
    used = sum(blocks(p) for p in everything)
    capacity = math.ceil(used / 0.95)  # 95% full
    args = ("--capacity", str(capacity), "--high", "0.9", "--low", "0.5", "--once", "--wait", "--deadline", "60",
            "-v")

    # 1: the 8 clean files are released, least recently used first; 50% needs 2 more:
    # the 2 least recently used files an archive can make releasable are archived
    first = rig.spaced(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    out = first.stdout
    size = blocks(noarchive)
    assert f"{len(everything)} files; used {_b(used)} of {_b(capacity)} (95%), high 90%, low 50%" in out
    assert f"released 8 file(s), {_b(8 * size)}" in out
    assert f"archives asked for: 2 file(s), {_b(2 * size)}" in out and "archived 2, failed 0" in out
    released_lines = [line.split()[1] for line in out.splitlines() if line.startswith("  released ")]
    assert released_lines == [f"clean/{i}" for i in range(8)], "least recently used first"
    archived = sorted(line.split()[2] for line in out.splitlines() if line.startswith("  archive requested "))
    assert archived == ["dirty/0", "new/0"], out  # last used 11 and 10: the oldest (keep and noarchive excluded)
    assert {rig.flags(p) & HS.RELEASED for p in clean} == {HS.RELEASED}
    for name in archived:
        p = root / name
        assert rig.flags(p) == CLEAN, f"{name}: archived, clean, not released yet"
        assert object_path(rig.archive, rig.fs.fid_of(p)).read_bytes() == data[name], "the data as it is now"
    assert rig.status()["mode"] == "once"

    # 2: the next run releases them, and the tree is below low
    second = rig.spaced(*args)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"released 2 file(s), {_b(2 * size)}" in second.stdout and "archives asked for" not in second.stdout
    released = {rel(root, p) for p in everything if rig.flags(p) & HS.RELEASED}
    assert released == {rel(root, p) for p in clean} | {"dirty/0", "new/0"}
    for name in released:
        flags = rig.flags(root / name)
        assert flags & HS.ARCHIVED and not flags & (HS.DIRTY | HS.NORELEASE | HS.LOST), (name, hex(flags))
        assert blocks(root / name) == 0 and os.stat(root / name).st_size == SIZE
    for p in dirty[1:] + new[1:] + keep + [noarchive]:
        assert not rig.flags(p) & HS.RELEASED and blocks(p) > 0, rel(root, p)
    assert {rig.flags(p) for p in dirty[1:]} == {CLEAN | int(HS.DIRTY)}
    now_used = sum(blocks(p) for p in everything)
    assert now_used < 0.5 * capacity <= now_used + size
    status = rig.status()
    assert status["used"] == now_used and status["capacity"] == capacity and status["files"] == len(everything)
    assert status["last_round"]["released"] == 2 and not status["draining"]

    # what was released comes back intact (it was archived as it was)
    (res,) = rig.client.submit([submit_item(rig.fs.fsname, rig.fs.fid_of(root / "dirty/0"), "restore")])
    assert rig.client.wait([res.action_id], deadline=60)[res.action_id].state == tpb.SUCCEEDED
    assert (root / "dirty/0").read_bytes() == data["dirty/0"]

    report = hsmctl("space", str(root / "clean"))
    assert report.returncode == 0, report.stderr
    lines = report.stdout.splitlines()
    assert lines[0].startswith(f"hsm-spaced on {root} (fsname simfs): last run with --once ")
    assert lines[1].startswith(f"used {_b(now_used)} of {_b(capacity)} ({100 * now_used / capacity:.0f}%), "
                               "high 90%, low 50%")
    assert f"released: last round 2 ({_b(2 * size)})" in report.stdout
    assert "last actions:" in report.stdout and " released " in report.stdout


def rel(root: Path, p: Path) -> str:
    return os.path.relpath(p, root)


def _b(n: int) -> str:
    from hsmctl.output import format_bytes

    return format_bytes(n)


@pytest.mark.slow  # a daemon process, archives: seconds
def test_the_daemon_follows_the_tree_with_inotify_and_the_event_log_and_stops_on_sigterm(rig: Rig) -> None:
    root = rig.root
    base = time.time() - 30 * DAY
    keep = root / "keep"
    write(keep, base)
    dirty = root / "dirty"
    write(dirty, base + 50)
    rig.archive_files([keep, dirty])
    rig.fs.set_flags(keep, set=HS.NORELEASE)
    write(dirty, base + 20)  # written since archived
    old = [root / f"old/{i}" for i in range(4)]
    for i, p in enumerate(old):
        write(p, base + 10 + i)
    capacity = 12 * SIZE  # 6 files: 50%, below high
    log = rig.tmp / "spaced.log"
    with log.open("w") as err:
        proc = subprocess.Popen(rig.spaced_args("--capacity", str(capacity), "--high", "0.9", "--low", "0.3",
                                                "--interval", "600", "--log-level", "debug"),
                                env=rig.env(), stdout=subprocess.DEVNULL, stderr=err)
    try:
        def says(what: str) -> str:
            return f"{what}; status {rig.status()}; log:\n{log.read_text()}"

        until(lambda: rig.status().get("files") == 6, 30, lambda: says("the first scan"))
        assert rig.status()["scans"] == 1 and rig.status()["candidates"]["archive"] == 5
        until(lambda: any(c.name == "hsm-spaced" for c in rig.client.status().consumers), 30,
              lambda: says("hsm-spaced to register as an event log consumer"))
        assert proc.poll() is None

        # a file written after the start, in a new directory: indexed by inotify; once
        # archived (by someone else), a release candidate; no rescan
        late = root / "late" / "f"
        write(late, base + 40)
        until(lambda: rig.status().get("files") == 7, 30, lambda: says("the late file to be indexed"))
        rig.archive_files([late])
        put_atime_back(late, base + 40)
        until(lambda: rig.status()["candidates"]["release"] == 1, 30, lambda: says("the late file as a candidate"))
        assert rig.status()["scans"] == 1

        # above high (the round interval is 10 minutes: events start the rounds): the late file
        # is released, the rest is archived, then released; never keep (never_release)
        big = root / "big"
        write(big, time.time(), 4 * SIZE)  # 7 + 4 of 12: above 90%

        def done() -> bool:
            s = rig.status()
            return bool(s) and s["used"] < 0.3 * capacity and not s["draining"] and not s["archives"]["outstanding"]
        until(done, 60, lambda: says("the tree to go below low"))
        s = rig.status()
        everything = [keep, dirty, late, big, *old]
        assert s["used"] == sum(blocks(p) for p in everything) < 0.3 * capacity
        assert rig.flags(late) & HS.RELEASED, "the only candidate when the tree grew: released first"
        for p in [dirty, big, *old]:  # archived when the candidates ran out, most of them released since
            flags = rig.flags(p)
            assert flags & HS.ARCHIVED and not flags & HS.DIRTY, (p, hex(flags))
        released = [p for p in everything if rig.flags(p) & HS.RELEASED]
        assert all(blocks(p) == 0 for p in released) and len(released) >= 5
        assert not rig.flags(keep) & HS.RELEASED and blocks(keep) > 0, "never_release"
        assert s["scans"] == 1, "inotify and the event log kept the index: no rescan"
        assert s["total"]["released"] == len(released) and s["archives"]["requested"] == 6
        until(lambda: rig.status()["archives"]["succeeded"] == 6, 30, lambda: says("the event log's archive ends"))
        assert rig.status()["hsm_events"] >= 6

        report = hsmctl("space", str(root))
        assert report.returncode == 0, report.stderr
        assert ": running, pid " in report.stdout.splitlines()[0]
        assert "archives: 6 asked for in all, 0 outstanding, 6 succeeded, 0 failed" in report.stdout

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "received SIGTERM: stopping" in text and "Traceback" not in text
    assert rig.status()["stopped"] is not None
    report = hsmctl("space", str(root), "--json")
    assert report.returncode == 0, report.stderr
    doc = json.loads(report.stdout)
    assert doc["state"] == "stopped" and doc["mode"] == "daemon" and doc["files"] == 8
    assert not any(c.name == "hsm-spaced" for c in rig.client.status().consumers), "deregistered on a clean stop"


# --- without a coordinator: the shell's index, refusals, options, hsmctl space ---


def _archived(fs: SimFS, p: Path) -> None:
    """Archived as the MDT records it (simfs's begin/end, the copy not made)."""
    fid = fs.fid_of(p)
    start = fs.archive_begin(fid, 1)
    fs.archive_end(fid, start.data_version, 0)


@pytest.fixture
def tree(tmp_path: Path) -> SimFS:
    return SimFS.create(tmp_path / "fs", fsname="simfs")


def test_the_index_follows_writes_renames_and_deletes_without_a_rescan(tree: SimFS) -> None:
    root = Path(tree.root)
    write(root / "a", 1000.0)
    _archived(tree, root / "a")
    d = SpaceDaemon(tree, Settings(capacity=100 * SIZE), None)
    try:
        d.start_watching()
        d.scan()
        assert d.plan.keys() == ["a"] and d.plan.release_candidates == 1

        def pump_until(cond: Any, what: str) -> None:
            until(lambda: d.pump_inotify() >= 0 and cond(), 10, what, interval=0.01)

        def busy(key: str) -> bool | None:
            f = d.plan.facts(key)
            return None if f is None else f.busy

        (root / "sub" / "deeper").mkdir(parents=True)
        write(root / "sub" / "deeper" / "b", 2000.0)
        pump_until(lambda: d.plan.facts("sub/deeper/b") is not None, "a file in new directories")
        with open(root / "c", "wb") as f:
            f.write(b"x" * 5000)
            f.flush()
            pump_until(lambda: busy("c") is True, "a file being written: busy")
            assert d.plan.archive_candidates == 1, "b only: c is being written"
        pump_until(lambda: busy("c") is False, "closed: not busy")
        assert d.plan.archive_candidates == 2
        os.rename(root / "sub", root / "moved")
        pump_until(lambda: "moved/deeper/b" in d.plan.keys() and "sub/deeper/b" not in d.plan.keys(),
                   "a directory renamed")
        write(root / "moved" / "deeper" / "e", 3000.0)
        pump_until(lambda: d.plan.facts("moved/deeper/e") is not None, "the renamed directory is still watched")
        tree.set_flags(root / "a", set=HS.NORELEASE)
        pump_until(lambda: d.plan.release_candidates == 0, "a flag change (IN_ATTRIB)")
        os.unlink(root / "a")
        pump_until(lambda: "a" not in d.plan.keys(), "a file deleted")
        assert sorted(d.plan.keys()) == ["c", "moved/deeper/b", "moved/deeper/e"]
        assert d.scans == 1 and d.inotify_events > 0
        d.pump_inotify()
        assert d.plan.used_bytes == sum(blocks(root / k) for k in d.plan.keys())
    finally:
        d.close()


def test_a_release_simfs_refuses_goes_back_to_the_plan(tree: SimFS) -> None:
    """The plan saw the files clean; one is written before the round: simfs
    refuses to release it (the second guard), and it is not tried again."""
    root = Path(tree.root)
    for i in range(3):
        write(root / f"f{i}", 1000.0 + i)
        _archived(tree, root / f"f{i}")
    d = SpaceDaemon(tree, Settings(high=0.5, low=0.1, capacity=3 * SIZE + 1, retry_after=600.0), None, once=True)
    try:
        d.scan(watch=False)
        assert d.plan.release_candidates == 3
        with open(root / "f0", "r+b") as f:  # the oldest, written behind its back
            f.write(b"changed")
        os.utime(root / "f0", (999.0, 5000.0))
        out = d.run_round()
        assert (out.released, out.refused) == (2, 1)
        assert tree.hsm_state(root / "f0").flags & HS.DIRTY and not tree.hsm_state(root / "f0").flags & HS.RELEASED
        assert all(tree.hsm_state(root / f"f{i}").flags & HS.RELEASED for i in (1, 2))
        doc = json.loads(status_path(root).read_text())
        assert doc["total"]["refused"] == 1 and doc["recent"][0]["action"] == "release refused"
        assert "changed since it was archived" in doc["recent"][0]["detail"]
        again = d.run_round()
        assert (again.released, again.refused) == (0, 0)
    finally:
        d.close()


def test_a_drain_goes_on_in_the_next_run_with_the_same_watermarks(tree: SimFS) -> None:
    root = Path(tree.root)
    for i, name in enumerate(["a", "b", "keep1", "keep2"]):
        write(root / name, 1000.0 + i)
        _archived(tree, root / name)
    for name in ("keep1", "keep2"):
        tree.set_flags(root / name, set=HS.NORELEASE)
    settings = Settings(high=0.9, low=0.3, capacity=4 * SIZE)

    def run(s: Settings) -> tuple[SpaceDaemon, Any]:
        d = SpaceDaemon(tree, s, None, once=True)
        try:
            return d, d.run_once()
        finally:
            d.close()

    _d, first = run(settings)  # 100% -> 50%: a and b released, the drain stays on (keep*: never_release)
    assert first.released == 2 and first.draining and json.loads(status_path(root).read_text())["draining"]
    tree.set_flags(root / "keep2", clear=HS.NORELEASE)  # a candidate appears between the runs
    other = SpaceDaemon(tree, Settings(high=0.9, low=0.2, capacity=4 * SIZE), None, once=True)
    assert not other.resume(), "other watermarks: another policy, no drain to go on with"
    other.close()
    d, second = run(settings)  # 50%, between the watermarks: only the drain left on releases keep2
    assert second.released == 1 and not second.draining and tree.hsm_state(root / "keep2").flags & HS.RELEASED
    assert not json.loads(status_path(root).read_text())["draining"]
    _d, third = run(settings)
    assert (third.released, third.draining) == (0, False)


def test_without_a_capacity_the_usage_is_the_file_systems(tree: SimFS) -> None:
    root = Path(tree.root)
    st = os.statvfs(root)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    capacity = used + st.f_bavail * st.f_frsize
    if used < 0.02 * capacity:
        pytest.skip("the file system is almost empty: a 2% high watermark cannot be crossed")
    write(root / "a", 1000.0)
    _archived(tree, root / "a")
    write(root / "b", 2000.0)
    d = SpaceDaemon(tree, Settings(high=0.02, low=0.01), None, once=True)
    try:
        out = d.run_once()
        assert out.capacity > 0 and out.used_before > 0.02 * out.capacity
        assert out.released == 1 and tree.hsm_state(root / "a").flags & HS.RELEASED
        assert out.not_queued == 1, "b: no coordinator to ask for its archive"
        assert json.loads(status_path(root).read_text())["capacity_source"] == "statvfs"
    finally:
        d.close()


@pytest.mark.parametrize(("args", "message"), [
    (["--low", "0.9", "--high", "0.8"], "--low (0.9) must be below --high (0.8)"),
    (["--low", "80%", "--high", "80%"], "--low (0.8) must be below --high (0.8)"),
    (["--high", "1.5"], "argument --high: must be in (0, 1]"),
    (["--low", "0"], "argument --low: must be in (0, 1]"),
    (["--high", "ninety"], "argument --high: not a fraction"),
    (["--capacity", "0"], "argument --capacity: the capacity must be more than 0 bytes"),
    (["--capacity", "12X"], "argument --capacity: not a size: '12X'"),
    (["--interval", "-1"], "argument --interval: must be a positive number of seconds"),
    (["--wait"], "--wait goes with --once"),
    (["--once", "--deadline", "5"], "--deadline goes with --wait"),
    (["--max-archives", "0"], "argument --max-archives: must be 1-100000"),
])
def test_bad_options_are_usage_errors(tree: SimFS, capsys: pytest.CaptureFixture[str], args: list[str],
                                      message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        spaced_main([str(tree.root), *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_the_script_refuses_what_is_not_a_simfs_tree(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "hsm-spaced"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "spaced.cli"]
    cp = subprocess.run([*cmd, str(tmp_path), "--once"], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 2
    assert f"hsm-spaced: error: {tmp_path}: not a simfs tree" in cp.stderr
    assert cp.stderr.startswith("usage: hsm-spaced")


def test_hsmctl_space_without_status_stale_and_not_a_tree(tree: SimFS, tmp_path: Path) -> None:
    root = Path(tree.root)
    cp = hsmctl("space", str(root))
    assert cp.returncode == 1 and "no status from hsm-spaced" in cp.stderr and "it has not run" in cp.stderr
    cp = hsmctl("space", str(tmp_path))
    assert cp.returncode == 4 and "not inside a simfs tree" in cp.stderr
    write(root / "a", 1000.0)
    d = SpaceDaemon(tree, Settings(capacity=10 * SIZE), None)
    try:
        d.scan(watch=False)
        doc = d.status()
        path = d.write_status()
    finally:
        d.close()
    gone = subprocess.Popen(["true"])
    gone.wait()
    path.write_text(json.dumps(dict(doc, pid=gone.pid, updated=time.time() - 300)))
    cp = hsmctl("space", str(root))
    assert cp.returncode == 1
    assert f"NOT RUNNING: pid {gone.pid} is gone without a clean stop; this status is stale (written 5m0" \
        in cp.stdout
    assert "used 64.0KiB of 640.0KiB (10%), high 90%, low 70%" in cp.stdout
    cp = hsmctl("space", str(root), "--json")
    assert cp.returncode == 1 and json.loads(cp.stdout)["state"] == "stale"
    other = subprocess.Popen(["sleep", "60"])
    try:
        path.write_text(json.dumps(dict(doc, pid=other.pid)))  # alive, but not an hsm-spaced
        assert json.loads(hsmctl("space", str(root), "--json").stdout)["state"] == "stale"
    finally:
        other.kill()
        other.wait()


def test_sizes() -> None:
    assert parse_size("4096") == 4096
    assert parse_size("10G") == 10 * 1024**3
    assert parse_size("500M") == 500 * 1024**2
    assert parse_size("1.5T") == int(1.5 * 1024**4)
    assert parse_size("64KiB") == parse_size("64k") == parse_size("64KB") == 65536
    for bad in ("", "G", "-1G", "1X", "0", "0.0001"):
        with pytest.raises(Exception, match="not a size|more than 0"):
            parse_size(bad)
