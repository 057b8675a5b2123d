"""hsm-mount with real processes: a local cluster (3 replicas, 2 agentd on a
simfs tree, posix archive), real FUSE mounts of that tree (one per
simulated OST, each its own initiator), and readers that open and read
released files through them, as an application on a Lustre client does.

Skipped, with the reason, where FUSE cannot be used (no /dev/fuse, no
libfuse3, not allowed to mount): ``make test`` installs libfuse3 when it
runs as root on Debian."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agentd.movers.posix import object_path
from hsm.hsmflags import HS
from hsm.simfs import SimFS
from hsmfs.cli import fuse_problem, unmount

pytestmark = pytest.mark.slow

PROBLEM = fuse_problem()
needs_fuse = pytest.mark.skipif(PROBLEM is not None, reason=f"hsm-mount cannot run here: {PROBLEM}")


@dataclass
class Local:
    work: Path
    env: dict[str, str]
    proc: subprocess.Popen[str]
    tree: Path = field(init=False)
    archive: Path = field(init=False)

    def __post_init__(self) -> None:
        self.tree = self.work / "fs"
        self.archive = self.work / "archive"

    def hsmctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cp = subprocess.run([sys.executable, "-m", "hsmctl.cli", *args], env=self.env, capture_output=True,
                            text=True, timeout=120)
        assert not check or cp.returncode == 0, (args, cp.stdout, cp.stderr)
        return cp


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    work = tmp_path_factory.mktemp("hsmfs") / "hsm"
    proc = subprocess.Popen([sys.executable, "-m", "coordinator.cli", "local", "--dir", str(work), "--agents", "2",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert "coordinators at" in first, first + (proc.stderr.read() if proc.poll() is not None else "")
    address = first.split("coordinators at ", 1)[1].split(" ", 1)[0].rstrip(",")
    line = first
    while not line.startswith("  stop:"):
        line = proc.stdout.readline()
    tls = work / "cluster" / "tls"
    env = dict(os.environ, HSM_COORDINATORS=address, HSM_TLS_CA=str(tls / "ca.pem"),
               HSM_TLS_CERT=str(tls / "admin.pem"), HSM_TLS_KEY=str(tls / "admin.key"))
    yield Local(work, env, proc)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Mount:
    path: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        unmount(os.fspath(self.path))
        return self.proc.returncode


MountFn = Callable[..., Mount]


@pytest.fixture
def mounts(local: Local, tmp_path: Path) -> Iterator[MountFn]:
    """``mounts(initiator, *options)``: the tree mounted on a new directory,
    once it is mounted; every one is stopped (SIGTERM) at the end."""
    made: list[Mount] = []

    def mount(initiator: str, *extra: str) -> Mount:
        mnt = tmp_path / f"mnt-{initiator}"
        mnt.mkdir()
        log = tmp_path / f"mount-{initiator}.log"
        proc = subprocess.Popen([sys.executable, "-m", "hsmfs.cli", str(local.tree), str(mnt), "--initiator", initiator,
                                 "--log-level", "debug", *extra],
                                env=local.env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        m = Mount(mnt, proc, log)
        made.append(m)
        end = time.monotonic() + 30
        while not os.path.ismount(mnt):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < end, "not mounted after 30 s: " + log.read_text()
            time.sleep(0.05)
        return m

    yield mount
    for m in made:
        m.stop()


def released_files(local: Local, name: str, n: int, seed: int = 1) -> dict[str, bytes]:
    """*n* files of random sizes under DIR/name, archived then released:
    their bytes by path from the tree's root."""
    rng = random.Random(seed)
    d = local.tree / name
    d.mkdir()
    files: dict[str, bytes] = {}
    for i in range(n):
        data = rng.randbytes(rng.randrange(1, 64 * 1024))
        (d / f"f{i:03d}").write_bytes(data)
        files[f"{name}/f{i:03d}"] = data
    paths = [str(local.tree / p) for p in files]
    local.hsmctl("archive", "--wait", *paths)
    local.hsmctl("release", *paths)
    fs = SimFS.open(local.tree)
    assert all(fs.hsm_state(p).flags & HS.RELEASED for p in paths)
    return files


def restores_of(local: Local, paths: list[str]) -> list[dict[str, object]]:
    import json

    fs = SimFS.open(local.tree)
    fids = {str(fs.fid_of(local.tree / p)) for p in paths}
    rows = json.loads(local.hsmctl("actions", "--kind", "restore", "--all", "--json").stdout)
    return [r for r in rows if r["fid"] in fids]


@needs_fuse
def test_fifty_readers_on_five_initiators_get_one_restore_per_file(local: Local, mounts: MountFn) -> None:
    files = released_files(local, "many", 100)
    ms = [mounts(f"ost{k}", "--stall-timeout", "600") for k in range(5)]
    paths = list(files)
    done_at: dict[tuple[int, str], float] = {}
    wrong: list[str] = []
    errors: list[str] = []

    def reader(r: int) -> None:
        mount = ms[r % 5]
        order = paths[:]
        random.Random(r).shuffle(order)
        for p in order:
            try:
                data = (mount.path / p).read_bytes()
            except OSError as exc:
                errors.append(f"reader {r} {p}: {exc}")
                continue
            done_at[(r, p)] = time.time()
            if data != files[p]:
                wrong.append(f"reader {r} {p}: {len(data)} bytes, sha {hashlib.sha1(data).hexdigest()[:8]}")

    threads = [threading.Thread(target=reader, args=(r,)) for r in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not any(t.is_alive() for t in threads), "readers still blocked after 240 s"
    assert errors == [] and wrong == []
    assert len(done_at) == 50 * 100
    restores = restores_of(local, paths)
    assert len(restores) == 100, f"{len(restores)} restores for 100 files"
    assert all(r["state"] == "SUCCEEDED" for r in restores)
    # the requests of several initiators were merged into each one
    initiators = {req["initiator"] for r in restores for req in r["requesters"]}  # type: ignore[attr-defined]
    assert initiators <= {f"ost{k}" for k in range(5)} and len(initiators) > 1
    # no reader kept waiting once its file was back: every read of a file
    # ended soon after that file's restore did (a stall timeout of 600 s
    # would show here as minutes)
    ended = {r["fid"]: float(r["ended"]) for r in restores}  # type: ignore[arg-type]
    fs = SimFS.open(local.tree)
    fid_of = {p: str(fs.fid_of(local.tree / p)) for p in paths}
    lag = max(t - ended[fid_of[p]] for (_r, p), t in done_at.items())
    assert lag < 30, f"a reader finished {lag:.1f} s after its file's restore ended"


@needs_fuse
def test_a_failed_restore_gives_the_reader_eio(local: Local, mounts: MountFn) -> None:
    files = released_files(local, "lost", 1, seed=2)
    [p] = files
    fs = SimFS.open(local.tree)
    obj = object_path(local.archive, fs.fid_of(local.tree / p))
    assert obj.exists()
    obj.unlink()  # the archive lost its copy: every attempt fails
    m = mounts("ost0", "--stall-timeout", "60")
    t0 = time.monotonic()
    with pytest.raises(OSError) as info:
        (m.path / p).read_bytes()
    assert info.value.errno == errno.EIO
    assert time.monotonic() - t0 < 60  # it failed; nobody waited for the stall timeout
    assert "the restore failed" in m.log.read_text()


@needs_fuse
def test_a_restore_that_does_not_move_gives_eio_after_the_stall_timeout(local: Local, mounts: MountFn) -> None:
    files = released_files(local, "stuck", 1, seed=3)
    [p] = files
    m = mounts("ost1", "--stall-timeout", "3")
    local.hsmctl("control", "disabled")  # nothing is dispatched: the restore waits, and does not move
    try:
        t0 = time.monotonic()
        with pytest.raises(OSError) as info:
            (m.path / p).read_bytes()
        waited = time.monotonic() - t0
    finally:
        local.hsmctl("control", "enabled")
    assert info.value.errno == errno.EIO
    assert waited >= 3
    assert "no progress for 3 s" in m.log.read_text()
    # the restore was only waiting: it runs now, and the file reads right
    assert (m.path / p).read_bytes() == files[p]


@needs_fuse
def test_no_block_mode_answers_enodata_at_once_and_still_restores(local: Local, mounts: MountFn) -> None:
    files = released_files(local, "nbr", 1, seed=4)
    [p] = files
    m = mounts("ost2", "--no-block")
    with pytest.raises(OSError) as info:
        (m.path / p).read_bytes()
    assert info.value.errno == errno.ENODATA
    fs = SimFS.open(local.tree)
    end = time.monotonic() + 60
    while fs.hsm_state(local.tree / p).flags & HS.RELEASED:
        assert time.monotonic() < end, "the restore asked for in no-block mode never ran"
        time.sleep(0.1)
    assert (m.path / p).read_bytes() == files[p]


@needs_fuse
def test_unmount_while_a_read_is_blocked_gives_the_reader_an_error(local: Local, mounts: MountFn) -> None:
    files = released_files(local, "umount", 1, seed=5)
    [p] = files
    m = mounts("ost3", "--stall-timeout", "600")
    local.hsmctl("control", "disabled")
    outcome: list[object] = []

    def read() -> None:
        try:
            outcome.append((m.path / p).read_bytes())
        except OSError as exc:
            outcome.append(exc)

    try:
        t = threading.Thread(target=read)
        t.start()
        end = time.monotonic() + 30
        while "restore is action" not in m.log.read_text() and time.monotonic() < end:
            time.sleep(0.05)  # the reader is blocked on its restore (the mount logs at debug only)
        time.sleep(0.5)
        assert t.is_alive()
        m.proc.send_signal(signal.SIGTERM)
        t.join(30)
        assert not t.is_alive(), "the reader hangs after the unmount"
        [err] = outcome
        assert isinstance(err, OSError) and err.errno in (errno.EIO, errno.ENOTCONN)
        assert m.proc.wait(30) == 0
        assert not os.path.ismount(m.path)
    finally:
        local.hsmctl("control", "enabled")


@needs_fuse
def test_released_files_through_the_mount_behave_as_on_lustre(local: Local, mounts: MountFn) -> None:
    files = released_files(local, "posix", 4, seed=6)
    a, b, c, d = sorted(files)
    m = mounts("ost4", "--stall-timeout", "120")
    fs = SimFS.open(local.tree)
    # stat: the size stays, no block is allocated, and nothing is restored
    st = os.stat(m.path / a)
    assert st.st_size == len(files[a]) and st.st_blocks == 0
    assert fs.hsm_state(local.tree / a).flags & HS.RELEASED
    # a write restores first, then lands on the restored data
    with open(m.path / a, "ab") as f:
        f.write(b"tail")
    assert (local.tree / a).read_bytes() == files[a] + b"tail"
    assert fs.hsm_state(local.tree / a).flags & HS.DIRTY
    # a truncate restores first too
    os.truncate(m.path / b, 10)
    assert (m.path / b).read_bytes() == files[b][:10]
    # unlink removes a released file (its archive copy stays)
    obj = object_path(local.archive, fs.fid_of(local.tree / c))
    os.unlink(m.path / c)
    assert not (local.tree / c).exists() and obj.exists()
    # the tree's own records are not part of the file system
    assert ".simfs" not in os.listdir(m.path) and ".lustre" not in os.listdir(m.path)
    with pytest.raises(FileNotFoundError):
        os.stat(m.path / ".simfs")
    # reads of a file already back block on nothing
    assert (m.path / d).read_bytes() == files[d]
    assert (m.path / d).read_bytes() == files[d]
    assert len(restores_of(local, [d])) == 1


def test_hsm_mount_refuses_bad_arguments_and_says_why(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    SimFS.create(tree, "t1")
    (tmp_path / "mnt").mkdir()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hsmfs.cli", *args], capture_output=True, text=True, timeout=60)

    cp = run(str(tmp_path / "mnt"), str(tmp_path / "mnt"))
    assert cp.returncode == 2 and "not a simfs tree" in cp.stderr
    cp = run(str(tree), str(tmp_path / "nowhere"))
    assert cp.returncode == 2 and "not a directory" in cp.stderr
    (tree / "inside").mkdir()
    cp = run(str(tree), str(tree / "inside"))
    assert cp.returncode == 2 and "must not be inside the tree" in cp.stderr
    cp = run(str(tree), str(tmp_path / "mnt"), "--stall-timeout", "0")
    assert cp.returncode == 2 and "positive number of seconds" in cp.stderr
    assert not os.path.ismount(tmp_path / "mnt")
