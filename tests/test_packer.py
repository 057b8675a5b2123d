"""Small-file packing (issue 18, docs/packing.md): the Packer alone, then
the posix mover archiving, restoring and removing packed files, then a
mover killed -9 mid-pack."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from agentd.movers.base import Result
from agentd.movers.packer import (
    CONTAINERS_DIR,
    HEADER,
    Packer,
    PackError,
    Slice,
    group_name,
    read_index,
)
from agentd.movers.posix import PosixMover
from hsm.fid import Fid
from hsm.hsmflags import HS, HSMA
from hsm.wire import hints
from tests.test_movers import Tree, tree  # noqa: F401 - fixture


def fid(n: int) -> Fid:
    return Fid(0x200000400, n, 0)


def containers(root: Path) -> list[Path]:
    return sorted((root / CONTAINERS_DIR).glob("*/*/*.pack"))


def pack_all(p: Packer, group: str, files: dict[int, bytes]) -> dict[int, Slice]:
    out: dict[int, Slice] = {}
    errors: list[BaseException] = []

    def one(n: int) -> None:
        try:
            out[n] = p.pack(group, fid(n), files[n])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(out) == len(files)
    return out


def test_files_gathered_into_containers_by_count_each_slice_indexed(tmp_path: Path) -> None:
    p = Packer(tmp_path, max_files=10, idle=30.0)
    files = {n: os.urandom(100 + n) for n in range(1, 31)}
    slices = pack_all(p, "1-disk", files)  # 30 files, 10 a container: no waiting for the idle time
    made = containers(tmp_path)
    assert len(made) == 3 and p.containers == 3
    assert not list((tmp_path / CONTAINERS_DIR).glob("*/*/*.tmp"))
    for n, s in slices.items():
        raw = (tmp_path / s.container).read_bytes()
        assert raw.startswith(HEADER) and raw[s.offset:s.offset + s.length] == files[n]
        assert s.checksum == "sha256:" + hashlib.sha256(files[n]).hexdigest()
        assert s.container.startswith(f"{CONTAINERS_DIR}/1-disk/")
    listed = {e["fid"]: e for c in made for e in read_index(c)}
    assert set(listed) == {str(fid(n)) for n in files}
    for n, s in slices.items():
        e = listed[str(fid(n))]
        assert (e["offset"], e["length"], e["checksum"]) == (s.offset, s.length, s.checksum)


def test_a_lone_file_is_written_once_idle_and_groups_are_kept_apart(tmp_path: Path) -> None:
    p = Packer(tmp_path, max_files=100, idle=0.2)
    t0 = time.monotonic()
    a = pack_all(p, group_name(1, "disk"), {1: b"a" * 10})
    b = pack_all(p, group_name(2, ""), {2: b"b" * 10})
    assert time.monotonic() - t0 >= 0.4  # each waited for its idle time
    assert a[1].container.split("/")[1] == "1-disk" and b[2].container.split("/")[1] == "2--"
    assert len(containers(tmp_path)) == 2


def test_a_container_is_written_when_its_bytes_reach_the_bound(tmp_path: Path) -> None:
    p = Packer(tmp_path, max_files=1000, max_bytes=4096, idle=30.0)
    slices = pack_all(p, "g", {n: b"x" * 1024 for n in range(1, 9)})  # 8 KiB: two containers of 4
    assert len({s.container for s in slices.values()}) == 2


def test_group_names_and_tags_are_safe_directory_names() -> None:
    assert group_name(3, "tape/../x") == "3-tape_.._x" and group_name(1, "") == "1--"
    # the mover groups by the tag the coordinator routes by (hsm.wire.hints)
    def tag_of(data: bytes) -> str:
        return hints(data)[0]

    assert tag_of(b"prio=1,tag=proj-a") == "proj-a" and tag_of(b"tag=") == "" and tag_of(b"x") == ""
    assert tag_of(b"tag=\xff") == ""


def test_a_container_that_cannot_be_written_fails_every_file_in_it(tmp_path: Path) -> None:
    (tmp_path / CONTAINERS_DIR).write_text("not a directory")
    p = Packer(tmp_path, max_files=3, idle=30.0)
    errors: list[BaseException] = []

    def one(n: int) -> None:
        try:
            p.pack("g", fid(n), b"abc")
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(errors) == 3 and all(isinstance(e, PackError) and "cannot write a container of g" in e.message
                                    for e in errors), errors
    assert p.containers == 0


# -- the posix mover -------------------------------------------------------------


def packing_mover(tree: Tree, **kw: object) -> PosixMover:  # noqa: F811
    return PosixMover(tree.archive, pack_below=64 * 1024, **{"pack_files": 5, "pack_idle": 0.3, **kw})  # type: ignore[arg-type]


def test_small_files_archive_into_one_container_and_restore_from_their_slice(tree: Tree) -> None:  # noqa: F811
    mover = packing_mover(tree)
    files = {}
    for n in range(5):
        data = os.urandom(1000 * (n + 1))
        files[n] = (*tree.make_file(f"small{n}", data), data)
    big_path, big_fid = tree.make_file("big", os.urandom(100 * 1024))  # over pack_below: an object of its own
    results: dict[int, Result] = {}
    jobs = {n: tree.job(HSMA.ARCHIVE, fid_) for n, (_p, fid_, _d) in files.items()}

    def run(n: int) -> None:
        results[n] = mover.run(jobs[n])

    threads = [threading.Thread(target=run, args=(n,)) for n in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(r.errno == 0 for r in results.values()), results
    (made,) = containers(tree.archive)
    for n, (path, _fid, data) in files.items():
        c = results[n].copy
        assert c is not None and c.container == str(made.relative_to(tree.archive)) and c.key == c.container
        assert c.size == len(data) and c.checksum == "sha256:" + hashlib.sha256(data).hexdigest()
        assert tree.flags(path) & HS.ARCHIVED
    big = mover.run(tree.job(HSMA.ARCHIVE, big_fid))
    assert big.errno == 0 and big.copy is not None and not big.copy.container
    assert containers(tree.archive) == [made]  # the big file is not in a container

    # restore one: only its slice is read, and checked
    path, fid_, data = files[3]
    c = results[3].copy
    assert c is not None
    tree.fs.release(path)
    job = tree.job(HSMA.RESTORE, fid_)
    job.packed, job.object_key, job.object_offset, job.object_length, job.object_checksum = (
        True, c.container, c.slot, c.size, c.checksum)
    assert mover.run(job) == Result(bytes_done=len(data))
    assert path.read_bytes() == data and not tree.flags(path) & HS.RELEASED

    # a corrupt slice: EIO, the file stays released
    path, fid_, data = files[1]
    c = results[1].copy
    assert c is not None
    tree.fs.release(path)
    with open(made, "r+b") as f:
        f.seek(c.slot + 10)
        f.write(b"\0" if data[10] else b"\1")
    job = tree.job(HSMA.RESTORE, fid_)
    job.packed, job.object_key, job.object_offset, job.object_length, job.object_checksum = (
        True, c.container, c.slot, c.size, c.checksum)
    res = mover.run(job)
    assert res.errno == errno.EIO and "checksum mismatch on the slice" in res.message
    assert tree.flags(path) & HS.RELEASED

    # remove of a packed copy: the container stays (other files live in it)
    path, fid_, data = files[0]
    c = results[0].copy
    assert c is not None
    job = tree.job(HSMA.REMOVE, fid_)
    job.packed, job.object_key, job.object_offset, job.object_length = True, c.container, c.slot, c.size
    assert mover.run(job).errno == 0
    assert made.exists() and containers(tree.archive) == [made]


KILLED_PACKER = textwrap.dedent("""
    import os, sys, threading
    from agentd.movers import packer as pk
    from hsm.fid import Fid
    root, stage = sys.argv[1], sys.argv[2]
    real_rename = os.rename
    def stuck(src, dst):  # the container is written and fsync'd, not yet in place
        print("writing", flush=True)
        threading.Event().wait()
    if stage == "rename":
        pk.os.rename = stuck
    p = pk.Packer(root, max_files=4, idle=3600)
    def one(n):
        s = p.pack("1--", Fid(0x200000400, n, 0), b"d" * 100)
        print("packed", n, s.container, flush=True)
    ts = [threading.Thread(target=one, args=(n,)) for n in range(1, 4 if stage == "gather" else 5)]
    for t in ts: t.start()
    if stage == "gather":  # once all three wait in the open batch
        while sum(len(b.items) for b in p._open.values()) < 3:
            threading.Event().wait(0.01)
        print("gathering", flush=True)
    for t in ts: t.join()
""")


@pytest.mark.parametrize("stage", ["gather", "rename"])
def test_a_mover_killed_mid_pack_leaves_no_container_and_no_file_reported(tmp_path: Path, stage: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", KILLED_PACKER, str(tmp_path), stage], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.stdout is not None
    want = "gathering" if stage == "gather" else "writing"
    deadline = time.monotonic() + 20
    line = ""
    while want not in line and time.monotonic() < deadline:
        line = proc.stdout.readline()
    assert want in line
    proc.send_signal(signal.SIGKILL)
    out = proc.communicate(timeout=10)[0]
    assert "packed" not in out  # no file was told it is archived: their actions run again
    assert containers(tmp_path) == []  # and no container is in place, half-indexed or not
    tmps = list((tmp_path / CONTAINERS_DIR).glob("*/*/*.tmp")) if stage == "rename" else []
    if stage == "rename":
        assert len(tmps) == 1 and read_index(tmps[0])  # complete, but never renamed into place
        # the next mover on the root removes it once it is old enough (another may be writing a fresh one)
        assert Packer(tmp_path).remove_stale_tmps() == 0
        assert Packer(tmp_path).remove_stale_tmps(older_than=0) == 1
        assert not list((tmp_path / CONTAINERS_DIR).glob("*/*/*.tmp"))
