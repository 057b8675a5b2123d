"""The posix and command movers, on real files of a real simfs tree."""

from __future__ import annotations

import errno
import hashlib
import os
import shlex
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agentd.movers.base import CopyMade, Job, Mover, Result
from agentd.movers.command import CommandMover
from agentd.movers.posix import CHECKSUM_XATTR, PosixMover, object_path
from agentd.simfs_backend import SimfsBackend
from hsm.fid import Fid
from hsm.hsmflags import HS, HSMA
from hsm.simfs import SimFS

KiB = 1 << 10
MiB = 1 << 20


# -- fixtures and helpers ------------------------------------------------------


class Tree:
    """A simfs tree, its backend and an archive directory."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "fs"
        self.fs = SimFS.create(self.root, "lustre")
        self.backend = SimfsBackend(self.root)
        self.archive = tmp_path / "archive"
        self.archive.mkdir()
        self._next_action = 1

    def make_file(self, name: str, data: bytes, mode: int = 0o640) -> tuple[Path, Fid]:
        path = self.root / name
        path.write_bytes(data)
        os.chmod(path, mode)
        os.utime(path, ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))
        return path, self.fs.fid_of(path)

    def job(
        self,
        kind: HSMA,
        fid: Fid,
        *,
        offset: int = 0,
        length: int = -1,
        report: Callable[[int, int], None] | None = None,
    ) -> Job:
        self._next_action += 1
        job = Job(
            action_id=self._next_action,
            attempt=1,
            kind=kind,
            fsname=self.fs.fsname,
            fid=fid,
            archive_id=1,
            offset=offset,
            length=length,
            data=b"prio=1",
            flags=0,
            backend=self.backend,
        )
        if report is not None:
            job.report = report
        return job

    def flags(self, path: Path) -> HS:
        return HS(self.fs.hsm_state(path).flags)

    def volatiles(self) -> list[str]:
        return os.listdir(self.root / ".simfs" / "volatile")


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path)


class Reports:
    """A thread-safe ``job.report`` recorder."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[int, int]] = []

    def __call__(self, done: int, total: int) -> None:
        with self.lock:
            self.calls.append((done, total))

    def max_done(self) -> int:
        with self.lock:
            return max((d for d, _ in self.calls), default=0)


class Background:
    """``mover.run(job)`` in a thread, as agentd runs it."""

    def __init__(self, mover: Mover, job: Job) -> None:
        self.result: Result | None = None
        self.thread = threading.Thread(target=self._run, args=(mover, job), daemon=True)
        self.thread.start()

    def _run(self, mover: Mover, job: Job) -> None:
        self.result = mover.run(job)

    def join(self, timeout: float) -> Result:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"mover still running after {timeout} s"
        assert self.result is not None
        return self.result


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def archived(tree: Tree, mover: PosixMover, name: str, data: bytes) -> tuple[Path, Fid]:
    """A file archived with ``mover`` then released."""
    path, fid = tree.make_file(name, data)
    assert mover.run(tree.job(HSMA.ARCHIVE, fid)).errno == 0
    tree.fs.release(path)
    assert tree.flags(path) & HS.RELEASED
    return path, fid


# -- object path -----------------------------------------------------------------


def test_object_path_is_the_lhsmtool_posix_v1_path() -> None:
    fid = Fid.parse("[0x200000400:0x1:0x0]")
    assert object_path("/arc", fid) == Path(
        "/arc/0001/0000/0400/0000/0002/0000/0x200000400:0x1:0x0"
    )
    big = Fid(0x123456789ABCDEF0, 0xFEDC_BA98, 0x7)
    assert object_path(Path("/a"), big) == Path(
        "/a/ba98/fedc/def0/9abc/5678/1234/0x123456789abcdef0:0xfedcba98:0x7"
    )


# -- posix mover: archive -----------------------------------------------------------


def test_archive_writes_the_object_with_its_checksum_and_attributes(tree: Tree) -> None:
    data = os.urandom(3 * MiB + 17)
    path, fid = tree.make_file("a file", data, mode=0o640)
    reports = Reports()
    result = PosixMover(tree.archive).run(tree.job(HSMA.ARCHIVE, fid, report=reports))

    obj = object_path(tree.archive, fid)
    digest = hashlib.sha256(data).hexdigest()
    st_file = path.stat()
    # what the coordinator's catalog records of this copy rides on the result
    assert result == Result(errno=0, message="", bytes_done=len(data), copy=CopyMade(
        key=str(obj.relative_to(tree.archive)), data_version=tree.fs.data_version(path), size=len(data),
        checksum=f"sha256:{digest}", uid=st_file.st_uid, gid=st_file.st_gid, mode=st_file.st_mode,
        path="/a file"))
    assert obj.read_bytes() == data
    assert os.getxattr(obj, CHECKSUM_XATTR) == f"sha256:{digest}".encode()
    assert sorted(os.listdir(obj.parent)) == [obj.name]  # no <obj>_tmp left
    st = obj.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_mtime_ns == 1_500_000_000_987_654_321
    # Hash directories are private to the copytool, as lhsmtool_posix makes them.
    assert stat.S_IMODE(obj.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tree.archive / "0001").stat().st_mode) == 0o700
    flags = tree.flags(path)
    assert flags & HS.ARCHIVED and flags & HS.EXISTS and not flags & HS.DIRTY
    assert reports.calls[-1] == (len(data), len(data))


def test_archive_of_a_large_file_reports_progress_along_the_way(tree: Tree) -> None:
    data = os.urandom(32 * MiB)
    _, fid = tree.make_file("big", data)
    reports = Reports()
    mover = PosixMover(tree.archive, chunk_size=256 * KiB, progress_bytes=4 * MiB)
    result = mover.run(tree.job(HSMA.ARCHIVE, fid, report=reports))

    assert result.errno == 0 and result.bytes_done == len(data)
    partial = [d for d, _ in reports.calls if 0 < d < len(data)]
    assert len(partial) >= 5, reports.calls
    assert [d for d, _ in reports.calls] == sorted(d for d, _ in reports.calls)
    assert all(t == len(data) for _, t in reports.calls)
    assert reports.calls[-1] == (len(data), len(data))


def test_archive_of_an_extent_copies_just_the_range(tree: Tree) -> None:
    data = os.urandom(20_000)
    _, fid = tree.make_file("ranged", data)
    result = PosixMover(tree.archive).run(tree.job(HSMA.ARCHIVE, fid, offset=1000, length=5000))

    assert result.errno == 0 and result.bytes_done == 5000
    obj = object_path(tree.archive, fid)
    content = obj.read_bytes()
    # The range sits at its own offsets in the object, as lhsmtool_posix writes it.
    assert len(content) == 6000
    assert content[1000:] == data[1000:6000]
    assert content[:1000] == b"\0" * 1000
    assert os.getxattr(obj, CHECKSUM_XATTR) == (
        f"sha256:{hashlib.sha256(content).hexdigest()}".encode()
    )
    assert not list(obj.parent.glob(obj.name + "_tmp*"))


def test_extent_archive_updates_the_range_of_an_existing_object(tree: Tree) -> None:
    data = bytearray(os.urandom(10_000))
    path, fid = tree.make_file("f", bytes(data))
    mover = PosixMover(tree.archive)
    assert mover.run(tree.job(HSMA.ARCHIVE, fid)).errno == 0
    data[4000:5000] = os.urandom(1000)
    path.write_bytes(bytes(data))
    assert mover.run(tree.job(HSMA.ARCHIVE, fid, offset=4000, length=1000)).errno == 0
    obj = object_path(tree.archive, fid)
    assert obj.read_bytes() == bytes(data)
    assert os.getxattr(obj, CHECKSUM_XATTR) == f"sha256:{hashlib.sha256(data).hexdigest()}".encode()


def test_archive_is_bandwidth_limited(tree: Tree) -> None:
    data = os.urandom(600 * KiB)
    _, fid = tree.make_file("slow", data)
    mover = PosixMover(tree.archive, bandwidth_limit=1 * MiB)
    start = time.monotonic()
    result = mover.run(tree.job(HSMA.ARCHIVE, fid))
    elapsed = time.monotonic() - start
    assert result.errno == 0
    # 600 KiB at 1 MiB/s: at least the ~0.55 s the cap allows for the bytes
    # after the first chunk.
    assert elapsed >= 0.5, elapsed
    assert object_path(tree.archive, fid).read_bytes() == data


def test_cancel_during_a_bandwidth_limited_archive(tree: Tree) -> None:
    data = os.urandom(4 * MiB)
    path, fid = tree.make_file("cancel me", data)
    reports = Reports()
    job = tree.job(HSMA.ARCHIVE, fid, report=reports)
    mover = PosixMover(tree.archive, bandwidth_limit=512 * KiB, progress_interval=0.05)
    run = Background(mover, job)
    wait_for(lambda: reports.max_done() > 0, what="the first progress report")

    t0 = time.monotonic()
    job.cancelled.set()
    result = run.join(timeout=5)
    assert time.monotonic() - t0 < 1.0
    assert result.errno == errno.ECANCELED
    obj = object_path(tree.archive, fid)
    assert not obj.exists()
    assert not list(obj.parent.glob(obj.name + "_tmp*"))
    assert not tree.flags(path) & HS.ARCHIVED


def test_an_attempt_whose_lease_ended_never_publishes_over_the_next_one(tree: Tree) -> None:
    """The partition case, at the mover: attempt 1 is still copying when
    its agent's lease ends and attempt 2 (another agent) starts on the same
    object. Each writes its own temporary object; attempt 1 stops without
    renaming anything or touching the file's HSM state; attempt 2 publishes
    and removes what earlier attempts left behind."""
    data = os.urandom(2 * MiB)
    path, fid = tree.make_file("contended", data)
    lease = threading.Event()
    lease.set()
    reports = Reports()
    first = tree.job(HSMA.ARCHIVE, fid, report=reports)
    first.may_publish = lease.is_set
    mover = PosixMover(tree.archive, bandwidth_limit=1 * MiB, progress_interval=0.05)
    run1 = Background(mover, first)
    wait_for(lambda: reports.max_done() > 0, what="attempt 1 copying")
    obj = object_path(tree.archive, fid)
    assert os.listdir(obj.parent) == [obj.name + "_tmp.1"]
    stale = obj.with_name(obj.name + "_tmp")  # lhsmtool_posix's, from a copytool killed long ago
    stale.write_bytes(b"old")

    lease.clear()  # the agent of attempt 1 lost its lease; attempt 2 begins elsewhere
    second = Job(**{**{f: getattr(first, f) for f in ("action_id", "kind", "fsname", "fid", "archive_id", "offset",
                                                      "length", "data", "flags", "backend")}, "attempt": 2})
    assert mover.run(second).errno == 0
    result = run1.join(timeout=10)
    assert result.errno == errno.ECANCELED, result
    assert obj.read_bytes() == data
    assert sorted(os.listdir(obj.parent)) == [obj.name], "every temporary object is gone"
    assert tree.flags(path) & HS.ARCHIVED and not tree.flags(path) & HS.DIRTY


def test_an_archive_that_finished_after_its_lease_ended_is_not_published(tree: Tree) -> None:
    data = os.urandom(64 * KiB)
    path, fid = tree.make_file("late", data)
    job = tree.job(HSMA.ARCHIVE, fid)
    job.may_publish = lambda: False
    result = PosixMover(tree.archive).run(job)
    assert result.errno == errno.ECANCELED and result.retry, result
    obj = object_path(tree.archive, fid)
    assert not obj.exists() and not os.listdir(obj.parent)
    assert tree.flags(path) == HS(0), "the file's HSM state is left as it was before the attempt began"


def test_archive_of_a_file_written_meanwhile_fails_ebusy(tree: Tree) -> None:
    path, fid = tree.make_file("busy", os.urandom(2 * MiB))
    written = threading.Event()

    def scribble(done: int, total: int) -> None:
        if done > 0 and not written.is_set():
            with open(path, "r+b") as f:
                f.write(b"changed")
            written.set()

    mover = PosixMover(tree.archive, chunk_size=256 * KiB, progress_bytes=256 * KiB)
    result = mover.run(tree.job(HSMA.ARCHIVE, fid, report=scribble))
    assert written.is_set()
    assert result.errno == errno.EBUSY
    assert "changed during the archive" in result.message
    assert not tree.flags(path) & HS.ARCHIVED


def test_archive_to_a_missing_archive_root_fails_and_creates_nothing(tree: Tree) -> None:
    path, fid = tree.make_file("f", b"x" * 100)
    gone = tree.archive / "not-mounted"
    result = PosixMover(gone).run(tree.job(HSMA.ARCHIVE, fid))
    assert result.errno == errno.ENOENT
    assert str(gone) in result.message
    assert not gone.exists()
    assert not tree.flags(path) & HS.ARCHIVED


def _stale(tree: Tree, kind: HSMA, fid: Fid, data_version: int) -> Job:
    job = tree.job(kind, fid)
    job.data_version = data_version
    return job


def _not_the_file(here: int, named: int) -> str:
    return (f"not the file the request named: data version {here} here, {named} in the request "
            "(a file of another file system with the same fsname and FID, or the file was written "
            "since the request); nothing copied")


def test_posix_mover_refuses_a_file_whose_data_version_is_not_the_requests(tree: Tree) -> None:
    mover = PosixMover(tree.archive)
    path, fid = tree.make_file("f", os.urandom(100 * KiB))
    dv = tree.fs.data_version(path)
    before = tree.fs.hsm_state(path)
    obj = object_path(tree.archive, fid)

    # ARCHIVE of a never archived file: no object, not even EXISTS set
    result = mover.run(_stale(tree, HSMA.ARCHIVE, fid, dv + 1))
    assert result == Result(errno=errno.ESTALE, message=_not_the_file(dv, dv + 1))
    assert not result.retry
    assert tree.fs.hsm_state(path) == before
    assert not obj.exists() and not list(obj.parent.glob(obj.name + "_tmp*"))

    # with the file's own version it archives
    assert mover.run(_stale(tree, HSMA.ARCHIVE, fid, dv)).errno == 0
    archived_state = tree.fs.hsm_state(path)
    stored = obj.read_bytes()

    # ARCHIVE again of an archived file: not made DIRTY, object untouched
    assert mover.run(_stale(tree, HSMA.ARCHIVE, fid, dv + 1)).errno == errno.ESTALE
    assert tree.fs.hsm_state(path) == archived_state
    assert obj.read_bytes() == stored

    # REMOVE: the archive copy stays
    assert mover.run(_stale(tree, HSMA.REMOVE, fid, dv + 1)).errno == errno.ESTALE
    assert obj.read_bytes() == stored and tree.fs.hsm_state(path) == archived_state

    # RESTORE is checked against the released file's data version
    tree.fs.release(path)
    released = tree.fs.hsm_state(path)
    assert mover.run(_stale(tree, HSMA.RESTORE, fid, dv + 1)).errno == errno.ESTALE
    assert tree.fs.hsm_state(path) == released and tree.volatiles() == []
    assert mover.run(_stale(tree, HSMA.RESTORE, fid, dv)).errno == 0
    assert path.read_bytes() == stored


def test_command_mover_runs_no_command_for_a_file_of_another_data_version(
    tree: Tree, tmp_path: Path
) -> None:
    ran = tmp_path / "ran"
    mover = CommandMover(f"touch {shlex.quote(str(ran))}", None, None)
    path, fid = tree.make_file("f", b"data")
    before = tree.fs.hsm_state(path)
    result = mover.run(_stale(tree, HSMA.ARCHIVE, fid, tree.fs.data_version(path) + 5))
    assert result.errno == errno.ESTALE and not result.retry
    assert not ran.exists()
    assert tree.fs.hsm_state(path) == before


# -- posix mover: restore -------------------------------------------------------------


def test_archive_release_restore_gives_back_the_exact_bytes(tree: Tree) -> None:
    data = os.urandom(5 * MiB + 3)
    mover = PosixMover(tree.archive, chunk_size=64 * KiB)
    path, fid = archived(tree, mover, "roundtrip", data)
    assert path.stat().st_size == len(data)

    reports = Reports()
    result = mover.run(tree.job(HSMA.RESTORE, fid, report=reports))
    assert result == Result(errno=0, message="", bytes_done=len(data))
    assert path.read_bytes() == data
    flags = tree.flags(path)
    assert not flags & HS.RELEASED and flags & HS.ARCHIVED
    assert reports.calls[-1] == (len(data), len(data))
    assert tree.volatiles() == []


def test_empty_file_round_trip(tree: Tree) -> None:
    mover = PosixMover(tree.archive)
    path, fid = archived(tree, mover, "empty", b"")
    assert os.getxattr(object_path(tree.archive, fid), CHECKSUM_XATTR) == (
        f"sha256:{hashlib.sha256(b'').hexdigest()}".encode()
    )
    assert mover.run(tree.job(HSMA.RESTORE, fid)) == Result()
    assert path.read_bytes() == b""
    assert not tree.flags(path) & HS.RELEASED


def test_restore_of_a_corrupt_object_fails_eio_and_the_file_stays_released(tree: Tree) -> None:
    data = os.urandom(300 * KiB)
    mover = PosixMover(tree.archive)
    path, fid = archived(tree, mover, "victim", data)
    obj = object_path(tree.archive, fid)
    with open(obj, "r+b") as f:  # one flipped byte, same size, checksum kept
        f.seek(123_456)
        byte = f.read(1)
        f.seek(123_456)
        f.write(bytes([byte[0] ^ 0xFF]))

    result = mover.run(tree.job(HSMA.RESTORE, fid))
    assert result.errno == errno.EIO
    assert not result.retry
    assert "checksum mismatch" in result.message and str(obj) in result.message
    assert tree.flags(path) & HS.RELEASED
    assert tree.volatiles() == []


def test_restore_of_a_missing_object_fails_enoent_naming_it(tree: Tree) -> None:
    mover = PosixMover(tree.archive)
    path, fid = archived(tree, mover, "lost", b"data" * 1000)
    obj = object_path(tree.archive, fid)
    obj.unlink()
    result = mover.run(tree.job(HSMA.RESTORE, fid))
    assert result.errno == errno.ENOENT
    assert str(obj) in result.message
    assert tree.flags(path) & HS.RELEASED
    assert tree.volatiles() == []


def test_restore_reads_the_object_the_catalog_key_names(tree: Tree) -> None:
    data = os.urandom(70 * KiB)
    mover = PosixMover(tree.archive)
    path, fid = archived(tree, mover, "moved", data)
    obj = object_path(tree.archive, fid)
    elsewhere = tree.archive / "imported" / "obj-1"
    elsewhere.parent.mkdir()
    os.rename(obj, elsewhere)  # the object under another key (the xattr checksum goes with it)
    job = tree.job(HSMA.RESTORE, fid)
    job.object_key = "imported/obj-1"
    assert mover.run(job) == Result(bytes_done=len(data))
    assert path.read_bytes() == data


@pytest.mark.parametrize("key", ["/etc/passwd", "../outside", "a/../../b", "a//b", "./a", "a/", "a\0b"])
def test_a_catalog_key_that_could_leave_the_archive_root_is_refused(tree: Tree, key: str) -> None:
    mover = PosixMover(tree.archive)
    path, fid = archived(tree, mover, "guarded", b"x" * 100)
    job = tree.job(HSMA.RESTORE, fid)
    job.object_key = key
    result = mover.run(job)
    assert result.errno == errno.EINVAL and "not a path below the archive root" in result.message
    assert tree.flags(path) & HS.RELEASED


def test_a_copy_that_is_not_the_last_leaves_the_file_unarchived(tree: Tree) -> None:
    mover = PosixMover(tree.archive)
    path = tree.fs.root / "first-of-two"
    path.write_bytes(b"y" * 5000)
    fid = tree.fs.fid_of(path)
    job = tree.job(HSMA.ARCHIVE, fid)
    job.final = False
    result = mover.run(job)
    assert result.errno == 0 and result.copy is not None
    assert object_path(tree.archive, fid).read_bytes() == b"y" * 5000
    assert not tree.flags(path) & HS.ARCHIVED  # the last copy's end archives it
    last = tree.job(HSMA.ARCHIVE, fid)
    assert mover.run(last).errno == 0 and tree.flags(path) & HS.ARCHIVED


def test_restore_of_an_object_without_checksum_is_done_unverified(tree: Tree) -> None:
    # An object written by lhsmtool_posix has no checksum xattr.
    data = os.urandom(100 * KiB)
    mover = PosixMover(tree.archive)
    path, fid = archived(tree, mover, "legacy", data)
    os.removexattr(object_path(tree.archive, fid), CHECKSUM_XATTR)
    assert mover.run(tree.job(HSMA.RESTORE, fid)).errno == 0
    assert path.read_bytes() == data


def test_restore_of_an_object_of_the_wrong_size_fails_eio(tree: Tree) -> None:
    mover = PosixMover(tree.archive, checksum=None)
    path, fid = archived(tree, mover, "short", os.urandom(10_000))
    obj = object_path(tree.archive, fid)
    os.truncate(obj, 5000)
    result = mover.run(tree.job(HSMA.RESTORE, fid))
    assert result.errno == errno.EIO and str(obj) in result.message
    assert tree.flags(path) & HS.RELEASED


def test_cancel_during_a_restore_leaves_the_file_released(tree: Tree) -> None:
    data = os.urandom(2 * MiB)
    path, fid = archived(tree, PosixMover(tree.archive), "restore me", data)
    reports = Reports()
    job = tree.job(HSMA.RESTORE, fid, report=reports)
    slow = PosixMover(tree.archive, bandwidth_limit=512 * KiB, progress_interval=0.05)
    run = Background(slow, job)
    wait_for(lambda: reports.max_done() > 0, what="the first progress report")

    t0 = time.monotonic()
    job.cancelled.set()
    result = run.join(timeout=5)
    assert time.monotonic() - t0 < 1.0
    assert result.errno == errno.ECANCELED
    assert tree.flags(path) & HS.RELEASED
    assert tree.volatiles() == []
    # The archive copy is intact: a later restore works.
    assert PosixMover(tree.archive).run(tree.job(HSMA.RESTORE, fid)).errno == 0
    assert path.read_bytes() == data


# -- posix mover: remove -------------------------------------------------------------


def test_remove_deletes_the_object_and_is_idempotent(tree: Tree) -> None:
    path, fid = tree.make_file("rm", os.urandom(50_000))
    mover = PosixMover(tree.archive)
    assert mover.run(tree.job(HSMA.ARCHIVE, fid)).errno == 0
    obj = object_path(tree.archive, fid)
    lov = obj.with_name(obj.name + ".lov")  # as lhsmtool_posix leaves it
    lov.write_bytes(b"striping")

    assert mover.run(tree.job(HSMA.REMOVE, fid)) == Result()
    assert not obj.exists() and not lov.exists()
    assert not tree.flags(path) & (HS.ARCHIVED | HS.EXISTS)
    assert mover.run(tree.job(HSMA.REMOVE, fid)) == Result()


def test_posix_mover_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="checksum algorithm 'nope'"):
        PosixMover("/arc", checksum="nope")
    with pytest.raises(ValueError, match="chunk_size"):
        PosixMover("/arc", chunk_size=0)
    with pytest.raises(ValueError, match="bandwidth_limit"):
        PosixMover("/arc", bandwidth_limit=-1)


# -- command mover ---------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"


def test_command_archive_and_restore_with_cp(tree: Tree, tmp_path: Path) -> None:
    store = tmp_path / "cmd archive"  # a space: placeholders stay one argument
    store.mkdir()
    data = os.urandom(256 * KiB)
    path, fid = tree.make_file("via cp", data)
    q = shlex.quote(str(store))
    mover = CommandMover(
        f"cp {{path}} {q}/{{fid_bare}}",
        f"cp {q}/{{fid_bare}} {{dest}}",
        f"rm -f {q}/{{fid_bare}}",
    )
    result = mover.run(tree.job(HSMA.ARCHIVE, fid))
    assert result.errno == 0 and result.bytes_done == len(data)
    assert (store / fid.bare).read_bytes() == data
    assert tree.flags(path) & HS.ARCHIVED

    tree.fs.release(path)
    result = mover.run(tree.job(HSMA.RESTORE, fid))
    assert result.errno == 0 and result.bytes_done == len(data)
    assert path.read_bytes() == data
    assert not tree.flags(path) & HS.RELEASED

    assert mover.run(tree.job(HSMA.REMOVE, fid)).errno == 0
    assert not (store / fid.bare).exists()
    assert not tree.flags(path) & HS.ARCHIVED


def test_command_placeholders_and_progress_lines(tree: Tree, tmp_path: Path) -> None:
    out = tmp_path / "args"
    script = (
        'printf "%s\\n" "$@" > ' + shlex.quote(str(out)) + "; "
        "echo progress 10 100; echo hello from the script; echo progress 60; "
        "echo progress nonsense; echo progress 100 100"
    )
    mover = CommandMover(
        "sh -c "
        + shlex.quote(script)
        + " sh {fid} {fid_bare} {fsname} {archive_id} {action_id} {attempt} {kind}"
        " {offset} {length:d} {data} {{literal}}",
        None,
        None,
    )
    _, fid = tree.make_file("args", b"z" * 100)
    reports = Reports()
    job = tree.job(HSMA.ARCHIVE, fid, offset=5, length=50, report=reports)
    assert mover.run(job).errno == 0
    assert out.read_text().splitlines() == [
        str(fid), fid.bare, "lustre", "1", str(job.action_id), "1", "archive",
        "5", "50", "prio=1", "{literal}",
    ]  # fmt: skip
    assert reports.calls == [(10, 100), (60, 100), (100, 100)]


def test_command_cancel_kills_the_process_group_promptly(tree: Tree, tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    script = f"sleep 60 & echo $$ $! > {shlex.quote(str(pidfile))}; wait"
    mover = CommandMover("sh -c " + shlex.quote(script), None, None, kill_grace=5)
    path, fid = tree.make_file("cmd cancel", b"x" * 10)
    job = tree.job(HSMA.ARCHIVE, fid)
    run = Background(mover, job)
    wait_for(lambda: pidfile.exists() and len(pidfile.read_text().split()) == 2, what="pids")
    pids = [int(p) for p in pidfile.read_text().split()]

    t0 = time.monotonic()
    job.cancelled.set()
    result = run.join(timeout=10)
    assert time.monotonic() - t0 < 1.5
    assert result.errno == errno.ECANCELED
    wait_for(lambda: not any(_alive(p) for p in pids), timeout=5, what="processes to be gone")
    assert not tree.flags(path) & HS.ARCHIVED


def test_command_ignoring_sigterm_is_killed_after_the_grace(tree: Tree, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    script = f"trap '' TERM; echo $$ > {shlex.quote(str(ready))}; while :; do sleep 0.05; done"
    mover = CommandMover("sh -c " + shlex.quote(script), None, None, kill_grace=0.3)
    _, fid = tree.make_file("stubborn", b"x")
    job = tree.job(HSMA.ARCHIVE, fid)
    run = Background(mover, job)
    wait_for(lambda: ready.exists() and ready.read_text().strip() != "", what="the script")
    pid = int(ready.read_text())
    job.cancelled.set()
    result = run.join(timeout=5)
    assert result.errno == errno.ECANCELED
    assert not _alive(pid)


def test_command_timeout_gives_etimedout(tree: Tree) -> None:
    mover = CommandMover("sleep 60", None, None, timeout=0.3)
    path, fid = tree.make_file("slowcmd", b"x")
    t0 = time.monotonic()
    result = mover.run(tree.job(HSMA.ARCHIVE, fid))
    assert time.monotonic() - t0 < 2.0
    assert result.errno == errno.ETIMEDOUT and result.retry
    assert "timeout" in result.message
    assert not tree.flags(path) & HS.ARCHIVED


@pytest.mark.parametrize(
    ("code", "want_errno", "want_retry"),
    [
        (75, errno.EAGAIN, True),  # EX_TEMPFAIL
        (28, errno.ENOSPC, True),
        (2, errno.ENOENT, False),
        (200, errno.EIO, False),
    ],
)
def test_command_exit_status_becomes_the_errno(
    tree: Tree, code: int, want_errno: int, want_retry: bool
) -> None:
    script = f"echo 'tape library offline' >&2; exit {code}"
    mover = CommandMover(None, "sh -c " + shlex.quote(script), None)
    mover_archive = PosixMover(tree.archive)
    path, fid = archived(tree, mover_archive, "failing", b"y" * 1000)
    result = mover.run(tree.job(HSMA.RESTORE, fid))
    assert (result.errno, result.retry) == (want_errno, want_retry)
    assert f"status {code}" in result.message or f"exit {code}" in result.message
    assert "tape library offline" in result.message
    assert tree.flags(path) & HS.RELEASED
    assert tree.volatiles() == []


def test_command_restore_that_writes_the_wrong_size_fails_eio(tree: Tree) -> None:
    path, fid = archived(tree, PosixMover(tree.archive), "half", b"q" * 4096)
    mover = CommandMover(None, "sh -c 'printf abc > \"$1\"' sh {dest}", None)
    result = mover.run(tree.job(HSMA.RESTORE, fid))
    assert result.errno == errno.EIO
    assert "wrote 3 bytes" in result.message and "4096" in result.message
    assert tree.flags(path) & HS.RELEASED
    assert tree.volatiles() == []


def test_command_for_an_unconfigured_kind_is_enotsup(tree: Tree) -> None:
    mover = CommandMover(None, "true", None)
    path, fid = tree.make_file("nocmd", b"x")
    result = mover.run(tree.job(HSMA.ARCHIVE, fid))
    assert result.errno == errno.ENOTSUP and "archive" in result.message
    assert tree.flags(path) == HS.NONE  # begin never ran: not even EXISTS


def test_command_that_cannot_be_run_fails_naming_it(tree: Tree) -> None:
    mover = CommandMover("/nonexistent/copytool {fid}", None, None)
    _, fid = tree.make_file("nobin", b"x")
    result = mover.run(tree.job(HSMA.ARCHIVE, fid))
    assert result.errno == errno.ENOENT and "/nonexistent/copytool" in result.message


@pytest.mark.parametrize(
    ("archive", "restore", "match"),
    [
        ("cp {path} /arc/{fidd}", None, r"unknown placeholder \{fidd\}"),
        ("cp {dest} /arc", None, r"\{dest\} is only meaningful in the restore"),
        ("cp {path} /arc/{fid.seq}", None, r"unknown placeholder"),
        (None, "cp '/arc/{fid_bare} {dest}", "cannot split"),
        ("cp {path", None, "bad braces"),
        ("   ", None, "empty"),
        ("echo {offset:q}", None, "bad placeholder"),
    ],
)
def test_command_mover_rejects_bad_commands_at_construction(
    archive: str | None, restore: str | None, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        CommandMover(archive, restore, None)


def test_restore_of_a_file_already_restored_is_not_needed(tree: Tree) -> None:
    """A second RESTORE that reaches a mover after another one brought the
    file back ends successfully without moving data."""
    mover = PosixMover(tree.archive)
    f, fid = archived(tree, mover, "again", b"payload")
    assert mover.run(tree.job(HSMA.RESTORE, fid)).errno == 0
    before = f.stat().st_mtime_ns
    res = mover.run(tree.job(HSMA.RESTORE, fid))
    assert res.errno == 0 and res.message.startswith("not needed")
    assert f.read_bytes() == b"payload" and f.stat().st_mtime_ns == before


def test_null_mover_completes_without_touching_the_file(tree: Tree) -> None:
    from agentd.movers.null import NullMover

    f, fid = tree.make_file("n", b"data")
    res = NullMover().run(tree.job(HSMA.ARCHIVE, fid))
    assert res.errno == 0 and "no data moved" in res.message
    assert tree.flags(f) == 0, "the null mover must not change HSM state"
    slow = tree.job(HSMA.ARCHIVE, fid)
    t = threading.Thread(target=lambda: results.append(NullMover(delay=30).run(slow)))
    results: list[Result] = []
    t.start()
    slow.cancelled.set()
    t.join(5)
    assert results and results[0].errno == errno.ECANCELED


def test_a_striped_object_s_checksum_is_built_from_its_parts_and_checked_in_any_chunks() -> None:
    from agentd.movers.posix import PartsHasher, combine_parts, new_hasher

    data = os.urandom(5 * 4096 + 123)
    part = 4096
    digests = [hashlib.sha256(data[i:i + part]).digest() for i in range(0, len(data), part)]
    want = combine_parts("sha256", digests)
    assert want == hashlib.sha256(b"".join(digests)).hexdigest()
    for chunk in (1, 1000, 4096, 5000, len(data)):
        h = new_hasher(f"sha256/{part}")
        assert isinstance(h, PartsHasher) and h.digest_size == 32
        for i in range(0, len(data), chunk):
            h.update(data[i:i + chunk])
        assert h.hexdigest() == want, chunk
    # a file of exactly whole parts, and one of a single short part
    h = new_hasher("sha256/4096")
    h.update(data[:8192])
    assert h.hexdigest() == combine_parts("sha256", digests[:2])
    h = new_hasher("sha256/4096")
    h.update(b"abc")
    assert h.hexdigest() == combine_parts("sha256", [hashlib.sha256(b"abc").digest()])
    assert new_hasher("sha256").name == "sha256"
    for bad in ("sha256/0", "sha256/x", "nope/4096", "nope"):
        with pytest.raises(ValueError):
            new_hasher(bad)
