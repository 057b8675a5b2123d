"""The Lustre stand-in: a simulated MDT process (tests/lustre_standin/mdt.py)
over a simfs tree and the stand-in liblustreapi compiled from C, used
through the project's ctypes binding (hsm.lustre.api.LustreApi) exactly as
a copytool and ``lfs hsm_*`` use the real library."""

from __future__ import annotations

import ctypes
import errno
import os
import select
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hsm.fid import Fid
from hsm.hsmflags import (
    HP_FLAG_COMPLETED,
    HP_FLAG_RETRY,
    HPS,
    HS,
    HSM_REQ_BLOCKING,
    HSMA,
    HUA,
    LUSTRE_EOF,
)
from hsm.lustre import api as api_mod
from hsm.lustre import hal, prototypes
from hsm.lustre.api import Copytool, LustreApi
from hsm.simfs import SimFS
from tests.lustre_standin import build as standin_build
from tests.lustre_standin import protocol as P
from tests.lustre_standin.harness import MdtProcess, library_or_skip, until


@pytest.fixture(scope="session")
def standin_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return library_or_skip(tmp_path_factory.mktemp("liblustreapi"))


@pytest.fixture(scope="session")
def api(standin_lib: Path) -> LustreApi:
    return LustreApi(standin_lib)


class Rig:
    """A simfs tree, its MDT, the stand-in library, and helpers that do
    what ``lfs hsm_*`` and a copytool do."""

    def __init__(self, api: LustreApi, root: Path, mdt: MdtProcess) -> None:
        self.api = api
        self.root = root
        self.fs = SimFS.open(root)
        self.mdt = mdt
        self.copytools: list[Copytool] = []

    def file(self, name: str, data: bytes) -> tuple[Path, Fid]:
        p = self.root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return p, self.api.path2fid(p)

    def request(self, action: int, fids: list[Fid], archive_id: int = 0, flags: int = 0,
                data: bytes = b"") -> None:
        """``lfs hsm_archive`` & co.: ``llapi_hsm_request`` on the mount."""
        self.api.request(self.root, hal.UserRequest(action, archive_id, flags,
                                                    tuple(hal.UserItem(f) for f in fids), data))

    def copytool(self, archives: list[int]) -> Copytool:
        ct = self.api.copytool_register(self.root, archives, os.O_NONBLOCK)
        self.copytools.append(ct)
        return ct

    @staticmethod
    def recv(ct: Copytool, timeout: float = 10.0) -> hal.ParsedList:
        """The next action list, waiting on the copytool's fd with poll."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no action list arrived")
            r, _, _ = select.select([ct.fd()], [], [], left)
            if not r:
                continue
            try:
                raw = ct.recv()
            except BlockingIOError:
                continue
            parsed = hal.parse_hal(raw)
            assert parsed.ok, parsed.errors
            return parsed

    @staticmethod
    def nothing_pending(ct: Copytool) -> bool:
        r, _, _ = select.select([ct.fd()], [], [], 0)
        return not r

    def recv_items(self, ct: Copytool, n: int, timeout: float = 10.0) -> list[hal.ActionItem]:
        items: list[hal.ActionItem] = []
        while len(items) < n:
            items.extend(self.recv(ct, timeout).items)
        assert len(items) == n, items
        return items

    def copy_out(self, ct: Copytool, item: hal.ActionItem) -> bytes:
        """An archive done by a copytool: begin, read, progress, end."""
        ca = self.api.action_begin(ct, item)
        fd = ca.fd()
        try:
            data = b""
            while chunk := os.read(fd, 1 << 16):
                data += chunk
        finally:
            os.close(fd)
        ca.progress(0, len(data), len(data))
        ca.end(0, len(data), 0, 0)
        return data

    def copy_in(self, ct: Copytool, item: hal.ActionItem, data: bytes) -> Fid:
        """A restore done by a copytool: begin, write the volatile file, end."""
        ca = self.api.action_begin(ct, item)
        dfid = ca.dfid()
        fd = ca.fd()
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        ca.progress(0, len(data), len(data))
        ca.end(0, len(data), 0, 0)
        return dfid

    def state(self, path: Path) -> tuple[int, int]:
        s = self.api.state_get(path)
        return s.states, s.archive_id

    def close(self) -> None:
        for ct in self.copytools:
            ct.unregister()


@pytest.fixture
def rig_factory(api: LustreApi, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(**params: Any) -> Rig:
        params.setdefault("loop_period", 0.05)
        base = tmp_path_factory.mktemp("fs")
        root = base / "mnt"
        SimFS.create(root, "lsi")
        rig = Rig(api, root, MdtProcess(root, base / "mdt.log", **params))
        made.append(rig)
        return rig

    yield make
    for rig in made:
        try:
            rig.close()
        finally:
            rig.mdt.stop()


@pytest.fixture
def rig(rig_factory: Callable[..., Rig]) -> Rig:
    return rig_factory()


# ----------------------------------------------------------- the library


def test_the_library_exports_every_prototype(standin_lib: Path) -> None:
    lib = ctypes.CDLL(str(standin_lib))
    for name in sorted(prototypes.names()):
        assert hasattr(lib, name), f"{standin_lib.name} does not export {name}"
    out = subprocess.run(["readelf", "-d", str(standin_lib)], capture_output=True, text=True)
    if out.returncode == 0:
        assert "Library soname: [liblustreapi.so.1]" in out.stdout
    # the header the C file was compiled against is the prototypes' text
    header = (standin_lib.parent / standin_build.HEADER_NAME).read_text()
    for text in prototypes.PROTOTYPES:
        assert text in header


def test_a_drifted_prototype_does_not_compile(tmp_path: Path) -> None:
    """A definition that differs from lustreapi.h's declaration is a compile
    error: here the header says ``long rfd_flags`` where the C file has int."""
    drifted = [t.replace("int rfd_flags)", "long rfd_flags)") for t in prototypes.PROTOTYPES]
    assert drifted != list(prototypes.PROTOTYPES)
    try:
        with pytest.raises(standin_build.BuildError, match="llapi_hsm_copytool_register"):
            standin_build.build(tmp_path, protos=drifted)
    except standin_build.CompilerMissing as e:
        pytest.skip(str(e))


def test_copytool_handle_has_the_real_magic(rig: Rig) -> None:
    ct = rig.copytool([1])
    raw = ctypes.cast(ct.handle, ctypes.POINTER(ctypes.c_uint32))
    assert raw[0] == 0xC0BE2001
    mnt = ctypes.cast(ct.handle, ctypes.POINTER(ctypes.c_char_p))[1]
    assert mnt == os.fsencode(rig.root)


# ------------------------------------------------------------ archive


def test_archive_like_lfs_hsm_archive(rig: Rig) -> None:
    data = os.urandom(100_000)
    path, fid = rig.file("dir/f", data)
    ct = rig.copytool([2])
    rig.request(HUA.ARCHIVE, [fid], archive_id=2, data=b"opt=1")

    lst = rig.recv(ct)
    assert (lst.version, lst.archive_id, lst.fsname) == (hal.HAL_VERSION, 2, "lsi")
    (item,) = lst.items
    assert (item.action, item.fid, item.dfid, item.data) == (HSMA.ARCHIVE, fid, fid, b"opt=1")
    assert (item.offset, item.length) == (0, LUSTRE_EOF)
    # sent: STARTED, and the file has EXISTS and the archive id already
    assert rig.state(path) == (HS.EXISTS, 2)
    now = rig.api.current_action(path)
    assert (now.state, now.action) == (HPS.RUNNING, HUA.ARCHIVE)

    ca = rig.api.action_begin(ct, item)
    assert ca.dfid() == fid
    fd = ca.fd()
    copied = os.read(fd, len(data) + 1)
    os.close(fd)
    assert copied == data
    ca.progress(0, 60_000, len(data))
    assert rig.api.current_action(path).length == 60_000  # bytes moved
    ca.end(0, len(data), 0, 0)

    assert rig.state(path) == (HS.EXISTS | HS.ARCHIVED, 2)
    assert rig.api.current_action(path).action == HUA.NONE
    st = rig.mdt.cookie(item.cookie)
    assert (len(st["begins"]), len(st["ends"]), st["status"]) == (1, 1, "SUCCEED")
    assert st["begins"][0]["data_version"] == rig.fs.data_version(path)
    # archived: a second request is not needed and queues nothing
    rig.request(HUA.ARCHIVE, [fid])
    assert all(r["status"] == "SUCCEED" for r in rig.mdt.records(fid))


def test_archive_end_with_changed_data_is_ebusy(rig: Rig) -> None:
    path, fid = rig.file("f", b"one")
    ct = rig.copytool([0])
    rig.request(HUA.ARCHIVE, [fid])
    (item,) = rig.recv(ct).items
    ca = rig.api.action_begin(ct, item)
    path.write_bytes(b"two, longer")
    with pytest.raises(OSError) as e:
        ca.end(0, 3, 0, 0)
    assert e.value.errno == errno.EBUSY
    flags, archive_id = rig.state(path)
    assert flags & HS.EXISTS and not flags & HS.ARCHIVED and archive_id == 1  # default archive id
    assert rig.mdt.cookie(item.cookie)["status"] == "FAILED"


def test_failed_archive_of_an_archived_file_makes_it_dirty(rig: Rig) -> None:
    path, fid = rig.file("f", b"data")
    ct = rig.copytool([1])
    rig.request(HUA.ARCHIVE, [fid])
    rig.copy_out(ct, rig.recv(ct).items[0])
    rig.request(HUA.ARCHIVE, [fid], flags=0)  # not needed: archived and clean
    assert len(rig.mdt.records(fid)) == 1
    path.write_bytes(b"data, changed")  # DIRTY: archive needed again
    rig.request(HUA.ARCHIVE, [fid])
    (item,) = rig.recv(ct).items
    rig.api.state_set(path, 0, HS.DIRTY)  # clean again while the copy runs
    assert rig.state(path)[0] == HS.EXISTS | HS.ARCHIVED
    # a copytool reporting an error: begin(is_error) + end(-EIO), sign ignored
    ca = rig.api.action_begin(ct, item, is_error=True)
    ca.end(item.offset, item.length, HP_FLAG_COMPLETED, -errno.EIO)
    flags, _ = rig.state(path)
    assert flags & HS.DIRTY and flags & HS.ARCHIVED
    st = rig.mdt.cookie(item.cookie)
    assert st["begins"] == [] and st["ends"][0]["errval"] == errno.EIO and st["status"] == "FAILED"


# ------------------------------------------------------------ restore


def _archived_released(rig: Rig, ct: Copytool, name: str, data: bytes) -> tuple[Path, Fid]:
    path, fid = rig.file(name, data)
    rig.request(HUA.ARCHIVE, [fid])
    (item,) = rig.recv(ct).items
    assert rig.copy_out(ct, item) == data
    rig.request(HUA.RELEASE, [fid])  # done by the client, not queued
    flags, _ = rig.state(path)
    assert flags & HS.RELEASED
    return path, fid


def test_restore_through_the_volatile_file(rig: Rig) -> None:
    data = os.urandom(300_000)
    ct = rig.copytool([1])
    path, fid = _archived_released(rig, ct, "big", data)
    assert os.path.getsize(path) == len(data) and path.read_bytes() != data

    rig.request(HUA.RESTORE, [fid])
    (item,) = rig.recv(ct).items
    assert (item.action, item.fid, item.dfid) == (HSMA.RESTORE, fid, fid)
    ca = rig.api.action_begin(ct, item)
    dfid = ca.dfid()
    assert dfid != fid  # the volatile file has a FID of its own
    fd = ca.fd()
    os.write(fd, data)
    assert rig.api.data_version(fd) > 0
    assert rig.api.path2fid(f"/proc/self/fd/{fd}") == dfid
    os.close(fd)
    assert rig.state(path)[0] & HS.RELEASED  # swapped only at end
    ca.end(0, len(data), 0, 0)

    assert path.read_bytes() == data
    assert rig.api.path2fid(path) == fid  # the file keeps its FID
    flags, _ = rig.state(path)
    assert flags == HS.EXISTS | HS.ARCHIVED
    st = rig.mdt.cookie(item.cookie)
    assert (len(st["begins"]), len(st["ends"])) == (1, 1)
    assert st["begins"][0]["dfid"] == str(dfid)


def test_a_restore_begins_on_the_mdt_of_its_file(rig: Rig) -> None:
    """DNE as lhsmtool_posix sees it: ``llapi_get_mdt_index_by_fid`` gives
    the MDT of a FID (the stand-in has one, index 0) and the volatile file
    is made on the MDT passed to begin; a closed fd is EBADF, an MDT that
    does not exist ENODEV."""
    ct = rig.copytool([1])
    path, fid = _archived_released(rig, ct, "dne", b"x" * 100)
    fd = os.open(rig.fs.root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert rig.api.mdt_index_by_fid(fd, fid) == 0
    finally:
        os.close(fd)
    with pytest.raises(OSError) as closed:
        rig.api.mdt_index_by_fid(fd, fid)
    assert closed.value.errno == errno.EBADF
    rig.request(HUA.RESTORE, [fid])
    (item,) = rig.recv(ct).items
    with pytest.raises(OSError) as no_mdt:
        rig.api.action_begin(ct, item, mdt_index=1)
    assert no_mdt.value.errno == errno.ENODEV
    ca = rig.api.action_begin(ct, item, mdt_index=0)
    vfd = ca.fd()
    os.write(vfd, b"x" * 100)
    os.close(vfd)
    ca.end(0, 100, 0, 0)
    assert rig.state(path)[0] == HS.EXISTS | HS.ARCHIVED


def test_the_first_progress_fixes_a_restores_volatile_file(rig: Rig) -> None:
    """mdt_hsm_update_request_state: the first progress of a RESTORE sets
    its data FID (the volatile file's); a later begin of the same cookie
    makes another volatile file, whose progress and end are EINVAL. Before
    any progress, a second begin is fine."""
    ct = rig.copytool([1])
    path, fid = _archived_released(rig, ct, "adopt", b"y" * 100)
    rig.request(HUA.RESTORE, [fid])
    (item,) = rig.recv(ct).items
    first = rig.api.action_begin(ct, item)
    first.progress(0, 10, 100)
    second = rig.api.action_begin(ct, item)
    assert second.dfid() != first.dfid()
    with pytest.raises(OSError) as bad:
        second.progress(0, 10, 100)
    assert bad.value.errno == errno.EINVAL
    vfd = first.fd()
    os.write(vfd, b"y" * 100)
    os.close(vfd)
    first.end(0, 100, 0, 0)
    assert path.read_bytes() == b"y" * 100
    assert not list(rig.fs.volatile_dir.iterdir()), "the MDT dropped the other volatile file"


def test_three_opens_of_a_released_file_make_one_restore(rig: Rig) -> None:
    data = b"restored on open " * 1000
    ct = rig.copytool([1])
    path, fid = _archived_released(rig, ct, "shared", data)
    results: list[BaseException | None] = []

    def reader() -> None:
        try:
            rig.mdt.client.open(path, timeout=30)
            results.append(None)
        except BaseException as e:
            results.append(e)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    until(lambda: rig.mdt.stats()["restore_handles"].get(str(fid)) == 3, 10, "three blocked opens")
    restores = [r for r in rig.mdt.records(fid) if r["action"] == "RESTORE"]
    assert len(restores) == 1 and restores[0]["flags"] == HSM_REQ_BLOCKING

    (item,) = rig.recv(ct).items
    assert item.action == HSMA.RESTORE
    assert not results  # still blocked
    rig.copy_in(ct, item, data)
    for t in threads:
        t.join(10)
    assert results == [None, None, None]
    assert path.read_bytes() == data
    assert rig.nothing_pending(ct)
    cookies = [c for c, s in rig.mdt.stats()["cookies"].items() if s["action"] == "RESTORE"]
    assert cookies == [str(item.cookie)]


def test_restore_of_a_file_not_released_is_not_needed_and_forced_is_eperm(rig: Rig) -> None:
    path, fid = rig.file("f", b"x")
    rig.request(HUA.RESTORE, [fid])
    assert rig.mdt.records(fid) == []
    with pytest.raises(PermissionError):
        rig.request(HUA.RESTORE, [fid], flags=0x1)  # HSM_FORCE_ACTION


# ------------------------------------------------------- the coordinator


def test_max_requests_holds_back_the_fourth(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(max_requests=3)
    files = [rig.file(f"f{i}", f"data {i}".encode()) for i in range(4)]
    ct = rig.copytool([1])
    rig.request(HUA.ARCHIVE, [fid for _, fid in files])
    items = rig.recv_items(ct, 3)
    stats = rig.mdt.stats()
    assert sorted(r["status"] for r in stats["records"]) == ["STARTED", "STARTED", "STARTED", "WAITING"]
    assert stats["max_running_seen"] == 3 and rig.nothing_pending(ct)
    (fourth_path, fourth_fid), = [(p, fid) for p, fid in files if fid not in {i.fid for i in items}]
    assert rig.api.current_action(fourth_path).state == HPS.WAITING

    rig.copy_out(ct, items[0])
    (last,) = rig.recv(ct).items
    assert last.fid == fourth_fid
    for item in (*items[1:], last):
        rig.copy_out(ct, item)
    assert rig.mdt.stats()["max_running_seen"] == 3
    for path, _ in files:
        assert rig.state(path)[0] & HS.ARCHIVED


def test_action_lists_hold_one_archive_id_and_at_most_5_kib(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(max_requests=200)
    files = [rig.file(f"g{i}", b"z") for i in range(90)]
    ct = rig.copytool([0])
    fids = [fid for _, fid in files]
    for k in range(0, 90, 30):  # one request may be at most MDS_MAXREQSIZE / 3
        rig.request(HUA.ARCHIVE, fids[k:k + 30], archive_id=1 + k // 30, data=b"x" * 100)
    seen: dict[int, int] = {}
    while sum(seen.values()) < 90:
        lst = rig.recv(ct)
        assert hal.hal_size(lst.action_list()) <= 5 * 1024
        assert {i.action for i in lst.items} == {HSMA.ARCHIVE}
        seen[lst.archive_id] = seen.get(lst.archive_id, 0) + len(lst.items)
    assert seen == {1: 30, 2: 30, 3: 30}
    assert rig.mdt.stats()["hals_sent"] >= 6  # 30 items of 176 bytes do not fit in 5 KiB


def test_request_too_large_for_one_rpc_is_e2big(rig: Rig) -> None:
    _, fid = rig.file("f", b"x")
    with pytest.raises(OSError) as e:
        rig.request(HUA.ARCHIVE, [Fid(fid.seq, fid.oid + k) for k in range(60)])
    assert e.value.errno == errno.E2BIG


def test_active_request_timeout_cancels_a_started_item_silently(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(active_request_timeout=0.3, loop_period=0.05)
    path, fid = rig.file("slow", b"slow")
    ct = rig.copytool([1])
    rig.request(HUA.ARCHIVE, [fid])
    (item,) = rig.recv(ct).items
    ca = rig.api.action_begin(ct, item)
    until(lambda: rig.mdt.cookie(item.cookie)["timed_out"], 10, "the time-out")
    assert rig.mdt.records(fid)[0]["status"] == "CANCELED"
    assert rig.nothing_pending(ct)  # the copytool is not told
    with pytest.raises(OSError) as e:
        ca.progress(0, 1, 4)
    assert e.value.errno == errno.ENOENT
    with pytest.raises(OSError) as e:
        ca.end(0, 4, 0, 0)
    assert e.value.errno == errno.ENOENT
    assert not rig.state(path)[0] & HS.ARCHIVED
    # the slot is free again
    path2, fid2 = rig.file("next", b"n")
    rig.request(HUA.ARCHIVE, [fid2])
    rig.copy_out(ct, rig.recv(ct).items[0])
    assert rig.state(path2)[0] & HS.ARCHIVED


def test_progress_keeps_a_slow_transfer_alive(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(active_request_timeout=0.4, loop_period=0.05)
    path, fid = rig.file("slow", b"s" * 10)
    ct = rig.copytool([1])
    rig.request(HUA.ARCHIVE, [fid])
    (item,) = rig.recv(ct).items
    ca = rig.api.action_begin(ct, item)
    end = time.monotonic() + 1.2
    k = 0
    while time.monotonic() < end:  # three time-outs' worth, with progress
        ca.progress(k, 1, 10)
        k += 1
        time.sleep(0.05)
    ca.end(0, 10, 0, 0)
    assert rig.state(path)[0] & HS.ARCHIVED


def test_cancel_reaches_the_copytool_with_the_original_cookie(rig: Rig) -> None:
    path, fid = rig.file("f", b"to cancel")
    ct = rig.copytool([3])
    rig.request(HUA.ARCHIVE, [fid], archive_id=3)
    (item,) = rig.recv(ct).items
    ca = rig.api.action_begin(ct, item)
    ca.progress(0, 1, 9)

    rig.request(HUA.CANCEL, [fid])  # lfs hsm_cancel: by FID
    lst = rig.recv(ct)
    (cancel,) = lst.items
    assert (cancel.action, cancel.cookie, cancel.fid, lst.archive_id) == (HSMA.CANCEL, item.cookie, fid, 3)
    assert rig.api.current_action(path).action == HUA.NONE  # lfs hsm_action never shows CANCEL
    with pytest.raises(OSError) as e:
        ca.progress(1, 1, 9)
    assert e.value.errno == errno.ECANCELED
    ca.end(0, 1, 0, errno.ECANCELED)
    flags, _ = rig.state(path)
    assert flags == HS.EXISTS
    st = rig.mdt.cookie(item.cookie)
    assert st["canceled"] and st["status"] == "CANCELED" and len(st["ends"]) == 1
    # a cancel of nothing is fine and sends nothing
    rig.request(HUA.CANCEL, [fid])
    assert rig.nothing_pending(ct)


def test_unregister_leaves_started_items_and_waiting_ones_go_to_the_next(rig: Rig) -> None:
    path, fid = rig.file("a", b"aaa")
    ct1 = rig.copytool([1])
    rig.request(HUA.ARCHIVE, [fid])
    (item,) = rig.recv(ct1).items
    ct1.unregister()
    until(lambda: rig.mdt.stats()["agents"] == [], 5, "the copytool to be gone")
    assert rig.mdt.records(fid)[0]["status"] == "STARTED"

    path_b, fid_b = rig.file("b", b"bbb")
    rig.request(HUA.ARCHIVE, [fid_b])  # no copytool: WAITING
    assert rig.mdt.records(fid_b)[0]["status"] == "WAITING"
    ct2 = rig.copytool([1])
    (item_b,) = rig.recv(ct2).items  # the WAITING one, not the STARTED one
    assert item_b.fid == fid_b
    assert rig.nothing_pending(ct2)
    assert rig.mdt.cookie(item.cookie)["sent"] == [1]  # never sent again

    # any copytool (any root process) may still end the old item by cookie
    rig.copy_out(ct2, item)
    rig.copy_out(ct2, item_b)
    assert rig.state(path)[0] & HS.ARCHIVED and rig.state(path_b)[0] & HS.ARCHIVED


def test_closed_copytool_connection_unregisters_it(rig: Rig) -> None:
    ct = rig.copytool([1])
    until(lambda: len(rig.mdt.stats()["agents"]) == 1, 5, "the registration")
    os.close(ct.fd())  # what a killed copytool does to its pipe
    until(lambda: rig.mdt.stats()["agents"] == [], 5, "the MDT to drop the copytool")
    ct.closed = True  # its handle is not used any more


def test_stats_show_one_begin_and_one_end_per_cookie(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(max_requests=4)
    payloads = {f"s{i}": os.urandom(1000 + i) for i in range(10)}
    files = {name: rig.file(name, data) for name, data in payloads.items()}
    ct = rig.copytool([1])
    rig.request(HUA.ARCHIVE, [fid for _, fid in files.values()])
    done = 0
    while done < 10:
        for item in rig.recv(ct).items:
            rig.copy_out(ct, item)
            done += 1
    rig.request(HUA.RELEASE, [fid for _, fid in files.values()])
    rig.request(HUA.RESTORE, [fid for _, fid in files.values()])
    by_fid = {fid: name for name, (_, fid) in files.items()}
    done = 0
    while done < 10:
        for item in rig.recv(ct).items:
            rig.copy_in(ct, item, payloads[by_fid[item.fid]])
            done += 1
    for name, (path, _) in files.items():
        assert path.read_bytes() == payloads[name]
    cookies = rig.mdt.stats()["cookies"]
    assert len(cookies) == 20
    for st in cookies.values():
        assert (len(st["sent"]), len(st["begins"]), len(st["ends"])) == (1, 1, 1), st
        assert st["begins"][0]["rc"] == 0 and st["ends"][0]["rc"] == 0 and st["status"] == "SUCCEED"
    assert rig.mdt.stats()["max_running_seen"] <= 4


def test_remove_clears_the_archive_flags(rig: Rig) -> None:
    path, fid = rig.file("f", b"r")
    ct = rig.copytool([1])
    rig.request(HUA.ARCHIVE, [fid])
    rig.copy_out(ct, rig.recv(ct).items[0])
    rig.request(HUA.REMOVE, [fid])
    (item,) = rig.recv(ct).items
    assert item.action == HSMA.REMOVE
    ca = rig.api.action_begin(ct, item)
    ca.end(0, 0, 0, 0)
    assert rig.state(path)[0] == 0
    st = rig.mdt.cookie(item.cookie)
    assert st["begins"] == [] and len(st["ends"]) == 1  # a remove sends no COPY_START

    # the archive copy of a file deleted since (root may ask): begin's ENOENT is fine
    path2, fid2 = rig.file("gone", b"g")
    rig.request(HUA.ARCHIVE, [fid2])
    rig.copy_out(ct, rig.recv(ct).items[0])
    path2.unlink()
    rig.request(HUA.REMOVE, [fid2])  # no archive id known: one REMOVE per archive served
    (item2,) = rig.recv(ct).items
    assert (item2.action, item2.fid) == (HSMA.REMOVE, fid2)
    ca = rig.api.action_begin(ct, item2)
    ca.end(0, 0, 0, 0)
    assert [r["status"] for r in rig.mdt.records(fid2) if r["action"] == "REMOVE"] == ["SUCCEED"] * 2


def test_retry_is_ignored_under_nra_and_honoured_without(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()  # policy NRA, the default
    _, fid = rig.file("f", b"r")
    ct = rig.copytool([1])
    rig.request(HUA.ARCHIVE, [fid])
    (item,) = rig.recv(ct).items
    ca = rig.api.action_begin(ct, item)
    ca.end(0, 0, HP_FLAG_RETRY, errno.EAGAIN)
    assert rig.mdt.cookie(item.cookie)["status"] == "FAILED"
    assert rig.nothing_pending(ct)

    rig.mdt.client.set_param(policy="")
    rig.request(HUA.ARCHIVE, [fid])
    (item,) = rig.recv(ct).items
    ca = rig.api.action_begin(ct, item)
    ca.end(0, 0, HP_FLAG_RETRY, errno.EAGAIN)
    (again,) = rig.recv(ct).items  # the same record, sent again
    assert again.cookie == item.cookie
    rig.copy_out(ct, again)
    assert rig.mdt.cookie(item.cookie)["sent"] == [1, 1]


def test_nbr_policy_answers_a_restore_enodata(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(policy="NRA NBR")
    ct = rig.copytool([1])
    path, fid = _archived_released(rig, ct, "f", b"nbr")
    with pytest.raises(OSError) as e:
        rig.request(HUA.RESTORE, [fid])
    assert e.value.errno == errno.ENODATA
    rig.copy_in(ct, rig.recv(ct).items[0], b"nbr")  # queued all the same
    assert path.read_bytes() == b"nbr"


class FakeCopytoolHandle(ctypes.Structure):
    """The first fields of ``struct hsm_copytool_private``, as coordinatool's
    mover fakes them (with its own magic): begin uses only mnt and the fds."""

    _fields_ = [("magic", ctypes.c_int), ("mnt", ctypes.c_char_p), ("kuch", ctypes.c_void_p),
                ("mnt_fd", ctypes.c_int), ("open_by_fid_fd", ctypes.c_int), ("kuc", ctypes.c_void_p)]


def test_an_unregistered_mover_begins_and_ends_by_cookie(rig: Rig) -> None:
    data = b"moved elsewhere"
    path, fid = rig.file("f", data)
    ct = rig.copytool([1])
    rig.request(HUA.ARCHIVE, [fid])
    (item,) = rig.recv(ct).items
    mnt_fd = os.open(rig.root, os.O_RDONLY)
    fid_fd = os.open(rig.root / ".lustre" / "fid", os.O_RDONLY)
    try:
        fake = FakeCopytoolHandle(0xC52C9B6F - (1 << 32), os.fsencode(rig.root), None, mnt_fd, fid_fd, None)
        handle = ctypes.cast(ctypes.pointer(fake), ctypes.POINTER(api_mod.HsmCopytoolPrivate))
        mover = Copytool(rig.api, handle, str(rig.root), (1,))
        assert rig.copy_out(mover, item) == data
    finally:
        os.close(mnt_fd)
        os.close(fid_fd)
    assert rig.state(path)[0] & HS.ARCHIVED
    assert rig.mdt.cookie(item.cookie)["status"] == "SUCCEED"


# ------------------------------------------------- state, FIDs, requests


def test_state_set_get_and_files_by_fid(rig: Rig) -> None:
    path, fid = rig.file("sub/f", b"content")
    rig.api.state_set(path, HS.NORELEASE | HS.NOARCHIVE, 0)
    assert rig.state(path) == (HS.NORELEASE | HS.NOARCHIVE, 0)
    with pytest.raises(PermissionError):
        rig.request(HUA.ARCHIVE, [fid])  # never_archive
    rig.api.state_set(path, 0, HS.NOARCHIVE)
    with pytest.raises(OSError) as e:
        rig.api.state_set(path, HS.DIRTY, 0)  # DIRTY without EXISTS
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        rig.api.state_set(path, 0x1000, 0)
    assert e.value.errno == errno.EINVAL
    rig.api.state_set(path, HS.EXISTS | HS.ARCHIVED, 0, archive_id=5)  # root may
    assert rig.state(path) == (HS.EXISTS | HS.ARCHIVED | HS.NORELEASE, 5)

    assert rig.api.fid2path(rig.root, fid) == "sub/f"
    assert rig.api.fid2path(rig.root / "sub", fid) == "sub/f"
    fd = rig.api.open_by_fid(rig.root, fid, os.O_RDONLY)
    try:
        assert os.read(fd, 100) == b"content"
        dv = rig.api.data_version(fd)
    finally:
        os.close(fd)
    path.write_bytes(b"content 2")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert rig.api.data_version(fd) != dv
    finally:
        os.close(fd)
    # renamed: the FID follows the file
    path.rename(rig.root / "g")
    assert rig.api.fid2path(rig.root, fid) == "g"
    fd = rig.api.open_by_fid(rig.root, fid, os.O_RDONLY)
    os.close(fd)
    with pytest.raises(FileNotFoundError):
        rig.api.fid2path(rig.root, Fid(fid.seq, fid.oid + 1000))
    with pytest.raises(FileNotFoundError):
        rig.api.state_get(rig.root / "missing")
    with pytest.raises(OSError) as e:
        rig.api.state_get("/proc/version")  # not on the file system
    assert e.value.errno == errno.ENOTTY


def test_user_request_alloc_and_requests_of_a_missing_fid(rig: Rig, api: LustreApi) -> None:
    alloc = api.function("llapi_hsm_user_request_alloc")
    hur = alloc(2, 10)
    assert hur and bytes(ctypes.string_at(hur, 24 + 2 * 32 + 10)) == bytes(24 + 2 * 32 + 10)
    ctypes.CDLL(None).free(hur)
    _, fid = rig.file("f", b"x")
    with pytest.raises(FileNotFoundError):
        rig.request(HUA.ARCHIVE, [Fid(fid.seq, fid.oid + 77)])
    with pytest.raises(OSError) as e:
        rig.request(HUA.ARCHIVE, [Fid(0, 1, 0)])  # not a sane FID
    assert e.value.errno == errno.EINVAL


# ------------------------------------------------------- recv in detail


class FakeMdt:
    """A socket at ROOT/.simfs/mdt.sock that accepts a registration and
    then writes whatever frames the test gives: to see what recv does with
    what the real MDT never sends."""

    def __init__(self, root: Path) -> None:
        (root / ".simfs").mkdir(parents=True)
        (root / ".lustre" / "fid").mkdir(parents=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(root / P.SOCKET_NAME))
        self.sock.listen(4)
        self.conn: socket.socket | None = None
        self.accepted = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        conn, _ = self.sock.accept()
        head = conn.recv(P.REQUEST.size, socket.MSG_WAITALL)
        _magic, op, _r, n = P.REQUEST.unpack(head)
        conn.recv(n, socket.MSG_WAITALL)
        assert op == P.OP_REGISTER
        conn.sendall(P.ANSWER.pack(0, 8) + struct.pack("<Q", 1))
        self.conn = conn
        self.accepted.set()

    def send(self, data: bytes) -> None:
        assert self.accepted.wait(5) and self.conn is not None
        self.conn.sendall(data)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.sock.close()


def _list(archive_id: int, version: int = hal.HAL_VERSION) -> bytes:
    item = hal.ActionItem(HSMA.ARCHIVE, Fid(0x200000400, 1), Fid(0x200000400, 1), 0, LUSTRE_EOF, 7)
    return hal.build_hal(hal.ActionList("lsi", archive_id, (item,), version=version))


def test_recv_checks_frames_as_the_real_one(api: LustreApi, tmp_path: Path) -> None:
    fake = FakeMdt(tmp_path)
    try:
        ct = api.copytool_register(tmp_path, [2])
        assert ct.fd() >= 0
        # another archive id: skipped; a wrong hal_version: passed on (not checked)
        fake.send(hal.kuc_frame(_list(9)) + hal.kuc_frame(_list(2, version=77)))
        got = hal.parse_hal(ct.recv())
        assert got.archive_id == 2 and got.version == 77
        # another transport: dropped; then a generic SHUTDOWN: ESHUTDOWN
        fake.send(hal.kuc_frame(b"junk", transport=9, msgtype=1)
                  + hal.kuc_frame(b"", hal.KUC_TRANSPORT_GENERIC, hal.KUC_MSG_SHUTDOWN))
        with pytest.raises(OSError) as e:
            ct.recv()
        assert e.value.errno == errno.ESHUTDOWN
        # HSM but not an action list, or too short: EPROTO
        fake.send(hal.kuc_frame(_list(2), msgtype=101))
        with pytest.raises(OSError) as e:
            ct.recv()
        assert e.value.errno == errno.EPROTO
        fake.send(hal.kuc_frame(b"\0" * 16))
        with pytest.raises(OSError) as e:
            ct.recv()
        assert e.value.errno == errno.EPROTO
        # a bad magic: EPROTO
        fake.send(b"\x00\x00\x02\x00\x64\x00\x30\x00")
        with pytest.raises(OSError) as e:
            ct.recv()
        assert e.value.errno == errno.EPROTO
        # the MDT goes away: EPIPE
        fake.close()
        with pytest.raises(OSError) as e:
            ct.recv()
        assert e.value.errno == errno.EPIPE
        ct.unregister()
    finally:
        fake.close()


def test_shutdown_makes_recv_eshutdown(rig: Rig) -> None:
    ct = rig.copytool([1])
    rig.mdt.client.shutdown_copytools()
    select.select([ct.fd()], [], [], 5)
    with pytest.raises(OSError) as e:
        ct.recv()
    assert e.value.errno == errno.ESHUTDOWN


def test_copy_actions_without_mdt_fail_cleanly(rig: Rig) -> None:
    _, fid = rig.file("f", b"x")
    ct = rig.copytool([1])
    rig.request(HUA.ARCHIVE, [fid])
    (item,) = rig.recv(ct).items
    ca = rig.api.action_begin(ct, item)
    rig.mdt.stop()
    with pytest.raises(OSError) as e:
        ca.end(0, 1, 0, 0)
    assert e.value.errno == errno.ENOTCONN
    assert ca.ended
