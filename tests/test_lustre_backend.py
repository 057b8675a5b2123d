"""agentd's ``lustre`` backend on the stand-in: a simulated MDT process over
a simfs tree and the stand-in liblustreapi. The test plays hsm-bridge (a
registered copytool that receives the MDT's items) and hands each item's
cookie to the backend the way an Assignment does, then runs the real
movers over it: begin/progress/end by cookie with a fake copytool handle,
joined cookies, the ESTALE refusal, EBUSY, ECANCELED from progress, a
transient failure given back and begun again, configuration errors."""

from __future__ import annotations

import errno
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentd.config import ConfigError, Override, load_config
from agentd.daemon import make_backend
from agentd.lustre_backend import LustreBackend, LustreBackendError
from agentd.movers.base import Job, Requester, Result
from agentd.movers.command import CommandMover
from agentd.movers.posix import PosixMover, object_path
from hsm.fid import Fid
from hsm.hsmflags import HS, HSMA, HUA
from hsm.lustre import hal
from hsm.lustre.api import Copytool, LustreApi
from hsm.simfs import SimFS
from tests.lustre_standin.harness import MdtProcess, library_or_skip, until

FSNAME = "lsi"


@pytest.fixture(scope="module")
def standin_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return library_or_skip(tmp_path_factory.mktemp("liblustreapi"))


class Rig:
    """A simfs mount, its MDT, a copytool playing hsm-bridge, an archive
    directory and the backend under test."""

    def __init__(self, lib: Path, base: Path, **mdt: Any) -> None:
        self.lib = lib
        self.api = LustreApi(lib)
        self.fs = SimFS.create(base / "mnt", FSNAME)
        self.root = self.fs.root
        self.mdt = MdtProcess(self.root, base / "mdt.log", **{"loop_period": 0.05, **mdt})
        self.archive = base / "archive"
        self.archive.mkdir()
        self.bridge: Copytool = self.api.copytool_register(self.root, [1], os.O_NONBLOCK)
        self.backends: list[LustreBackend] = []
        self.next_id = 0

    def backend(self, **kw: Any) -> LustreBackend:
        kw.setdefault("progress_interval", 0.05)
        b = LustreBackend(self.root, FSNAME, str(self.lib), **kw)
        self.backends.append(b)
        return b

    def file(self, name: str, data: bytes) -> tuple[Path, Fid]:
        p = self.root / name
        p.write_bytes(data)
        return p, self.api.path2fid(p)

    def request(self, action: int, fids: list[Fid]) -> None:
        """``lfs hsm_archive`` & co."""
        self.api.request(self.root, hal.UserRequest(action, 0, 0, tuple(hal.UserItem(f) for f in fids)))

    def items(self, n: int, timeout: float = 10.0) -> list[hal.ActionItem]:
        """The next *n* items the MDT sends the bridge."""
        out: list[hal.ActionItem] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            assert left > 0, f"only {len(out)} of {n} items arrived"
            r, _, _ = select.select([self.bridge.fd()], [], [], left)
            if r:
                try:
                    out.extend(hal.parse_hal(self.bridge.recv()).items)
                except BlockingIOError:
                    pass
        return out

    def job(self, backend: LustreBackend, items: list[hal.ActionItem], **kw: Any) -> Job:
        """The Job agentd makes of an Assignment whose requesters are these
        MDT items (oldest first)."""
        first = items[0]
        self.next_id += 1
        kw.setdefault("requesters", tuple(Requester(f"lustre:{FSNAME}", i.cookie, i.gid) for i in items))
        return Job(action_id=self.next_id, attempt=kw.pop("attempt", 1), kind=first.action, fsname=FSNAME,
                   fid=first.fid, archive_id=1, offset=0, length=-1, data=first.data, flags=0,
                   backend=backend, **kw)

    def cookie(self, cookie: int) -> dict[str, Any]:
        return self.mdt.cookie(cookie)

    def state(self, path: Path) -> int:
        return self.api.state_get(path).states

    def close(self) -> None:
        for b in self.backends:
            b.close()
        self.bridge.unregister()
        self.mdt.stop()


@pytest.fixture
def rig(standin_lib: Path, tmp_path: Path) -> Iterator[Rig]:
    r = Rig(standin_lib, tmp_path)
    try:
        yield r
    finally:
        r.close()


def posix(rig: Rig, **kw: Any) -> PosixMover:
    return PosixMover(rig.archive, progress_interval=0.02, **kw)


def ok(res: Result) -> None:
    assert res.errno == 0, res


# ------------------------------------------------------ the whole life


def test_archive_release_restore_remove_by_cookie_with_a_fake_handle(rig: Rig) -> None:
    data = os.urandom(300_000)
    path, fid = rig.file("f", data)
    backend = rig.backend()
    assert not rig.mdt.stats()["agents"][1:], "the fake handle registers nothing: only the bridge is an agent"
    mover = posix(rig)

    rig.request(HUA.ARCHIVE, [fid])
    (item,) = rig.items(1)
    ok(mover.run(rig.job(backend, [item])))
    assert rig.state(path) & HS.ARCHIVED and not rig.state(path) & HS.DIRTY
    assert object_path(rig.archive, fid).read_bytes() == data
    st = rig.cookie(item.cookie)
    assert (len(st["begins"]), len(st["ends"]), st["status"]) == (1, 1, "SUCCEED")
    assert st["ends"][0]["errval"] == 0

    rig.fs.release(path)
    rig.request(HUA.RESTORE, [fid])
    (item,) = rig.items(1)
    ok(mover.run(rig.job(backend, [item])))
    assert path.read_bytes() == data and not rig.state(path) & HS.RELEASED
    st = rig.cookie(item.cookie)
    assert (len(st["begins"]), len(st["ends"]), st["status"]) == (1, 1, "SUCCEED")

    rig.request(HUA.REMOVE, [fid])
    (item,) = rig.items(1)
    ok(mover.run(rig.job(backend, [item])))
    assert not object_path(rig.archive, fid).exists()
    assert not rig.state(path) & HS.ARCHIVED
    assert rig.cookie(item.cookie)["status"] == "SUCCEED"


def test_a_restore_begins_on_the_mdt_of_its_file_an_archive_anywhere(rig: Rig) -> None:
    """DNE: the backend asks the file's MDT (``llapi_get_mdt_index_by_fid``)
    and begins the restore there, as lhsmtool_posix does; an archive passes
    -1. The stand-in refuses a restore begun on an MDT it does not have, so
    a wrong index would fail the restore."""
    path, fid = rig.file("f", b"dne" * 1000)
    backend = rig.backend()
    begun: list[tuple[int, int]] = []
    real = backend.api.action_begin

    def spy(ct: Any, item: Any, mdt_index: int = -1, open_flags: int = 0, is_error: bool = False) -> Any:
        begun.append((item.action, mdt_index))
        return real(ct, item, mdt_index, open_flags, is_error)

    backend.api.action_begin = spy  # type: ignore[method-assign]
    mover = posix(rig)
    for action in (HUA.ARCHIVE, HUA.RESTORE):
        if action == HUA.RESTORE:
            rig.fs.release(path)
        rig.request(action, [fid])
        (item,) = rig.items(1)
        ok(mover.run(rig.job(backend, [item])))
    assert begun == [(HSMA.ARCHIVE, -1), (HSMA.RESTORE, 0)]
    assert path.read_bytes() == b"dne" * 1000


def test_the_command_mover_over_the_lustre_backend(rig: Rig) -> None:
    """{path} is the .lustre/fid path, {dest} the volatile file's
    /proc/<pid>/fd/N (it has no name on Lustre)."""
    data = b"by command\n" * 1000
    path, fid = rig.file("c", data)
    backend = rig.backend()
    store = rig.archive / "cmd"
    store.mkdir()
    mover = CommandMover(archive_cmd=f"sh -c 'cat {{path}} > {store}/{{fid_bare}}'",
                         restore_cmd=f"sh -c 'cat {store}/{{fid_bare}} > {{dest}}'",
                         remove_cmd=f"rm -f {store}/{{fid_bare}}")
    rig.request(HUA.ARCHIVE, [fid])
    (item,) = rig.items(1)
    ok(mover.run(rig.job(backend, [item])))
    assert (store / fid.bare).read_bytes() == data and rig.state(path) & HS.ARCHIVED
    rig.fs.release(path)
    rig.request(HUA.RESTORE, [fid])
    (item,) = rig.items(1)
    job = rig.job(backend, [item])
    ok(mover.run(job))
    assert path.read_bytes() == data and not rig.state(path) & HS.RELEASED


# ----------------------------------------------------------- cookies


def test_joined_cookies_one_copy_the_others_end_ealready(rig: Rig) -> None:
    data = b"joined" * 5000
    path, fid = rig.file("j", data)
    backend = rig.backend()
    rig.request(HUA.ARCHIVE, [fid])
    rig.request(HUA.ARCHIVE, [fid])  # before anything ran: the coordinator joins the two items
    first, second = rig.items(2)
    assert first.cookie != second.cookie
    ok(posix(rig).run(rig.job(backend, [first, second])))
    a, b = rig.cookie(first.cookie), rig.cookie(second.cookie)
    assert (len(a["begins"]), [e["errval"] for e in a["ends"]], a["status"]) == (1, [0], "SUCCEED")
    # begin(is_error) reaches no MDT; its end carries EALREADY
    assert (len(b["begins"]), [e["errval"] for e in b["ends"]]) == (0, [errno.EALREADY])
    assert rig.state(path) & HS.ARCHIVED and not rig.state(path) & HS.DIRTY, "EALREADY does not dirty"


def test_a_cookie_the_mdt_no_longer_holds_is_skipped_for_the_next(rig: Rig) -> None:
    path, fid = rig.file("s", b"x" * 1000)
    backend = rig.backend()
    rig.request(HUA.ARCHIVE, [fid])
    rig.request(HUA.ARCHIVE, [fid])
    gone, live = rig.items(2)
    backend.end_item(gone, errno.ETIMEDOUT)  # the MDT forgets it (as after active_request_timeout)
    ok(posix(rig).run(rig.job(backend, [gone, live])))
    assert rig.cookie(live.cookie)["status"] == "SUCCEED" and rig.state(path) & HS.ARCHIVED


def test_an_action_without_an_mdt_cookie_fails_einval(rig: Rig) -> None:
    path, fid = rig.file("n", b"no cookie")
    backend = rig.backend()
    item = hal.ActionItem(HSMA.ARCHIVE, fid, fid, 0, 2**64 - 1, 0)
    for requesters in ((), (Requester("hsmctl@host", 0), Requester("lustre:other", 42))):
        res = posix(rig).run(rig.job(backend, [item], requesters=requesters))
        assert res.errno == errno.EINVAL and not res.retry
        assert "needs the MDT's cookie" in res.message and "through the MDT" in res.message
    assert not rig.state(path) & HS.EXISTS


# ------------------------------------------------------- refusals, EBUSY


def test_a_refused_action_ends_estale(rig: Rig) -> None:
    path, fid = rig.file("r", b"stale")
    backend = rig.backend()
    rig.request(HUA.ARCHIVE, [fid])
    (item,) = rig.items(1)
    res = posix(rig).run(rig.job(backend, [item], data_version=12345))
    assert res.errno == errno.ESTALE and not res.retry
    st = rig.cookie(item.cookie)
    assert [e["errval"] for e in st["ends"]] == [errno.ESTALE] and st["status"] == "FAILED"
    assert not object_path(rig.archive, fid).exists() and not rig.state(path) & HS.ARCHIVED


def test_a_file_written_during_its_archive_ends_ebusy(rig: Rig) -> None:
    path, fid = rig.file("w", b"before" * 100)
    backend = rig.backend()
    rig.request(HUA.ARCHIVE, [fid])
    (item,) = rig.items(1)
    store = rig.archive / "cmd"
    store.mkdir()
    mover = CommandMover(archive_cmd=f"sh -c 'cat {{path}} > {store}/x; echo more >> {path}'", restore_cmd="true",
                         remove_cmd="true")
    res = mover.run(rig.job(backend, [item]))
    assert res.errno == errno.EBUSY and not res.retry, res
    st = rig.cookie(item.cookie)
    assert [e["errval"] for e in st["ends"]] == [errno.EBUSY] and st["status"] == "FAILED"
    assert not rig.state(path) & HS.ARCHIVED


# ---------------------------------------------- cancels, retries, give back


def _run_in_thread(fn: Callable[[], Result]) -> tuple[threading.Thread, list[Result]]:
    out: list[Result] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    return t, out


def test_ecanceled_from_progress_stops_the_copy_and_leaves_the_end_to_the_bridge(rig: Rig) -> None:
    path, fid = rig.file("slow", os.urandom(400_000))
    backend = rig.backend()
    rig.request(HUA.ARCHIVE, [fid])
    (item,) = rig.items(1)
    job = rig.job(backend, [item])
    t, out = _run_in_thread(lambda: posix(rig, bandwidth_limit=100_000).run(job))
    until(lambda: rig.cookie(item.cookie)["progress"], 10, "progress at the MDT")
    rig.request(HUA.CANCEL, [fid])  # lfs hsm_cancel: the MDT cancels the running request
    t.join(10)
    assert not t.is_alive(), "the copy stopped"
    (res,) = out
    assert res.errno == errno.ECANCELED and "cancelled at the MDT" in res.message, res
    st = rig.cookie(item.cookie)
    assert st["canceled"] and st["ends"] == [], "given back: the bridge ends it"
    assert any(p["rc"] == -errno.ECANCELED for p in st["progress"])
    assert not object_path(rig.archive, fid).exists() and not rig.state(path) & HS.ARCHIVED
    rig.items(1)  # the CANCEL item the bridge gets
    backend.end_item(item, errno.ECANCELED)  # what the bridge does once the action is CANCELED
    assert [e["errval"] for e in rig.cookie(item.cookie)["ends"]] == [errno.ECANCELED]
    assert not rig.mdt.stats()["running"]


def test_a_transient_failure_is_given_back_and_the_next_attempt_begins_the_same_cookie(rig: Rig) -> None:
    data = b"again" * 2000
    path, fid = rig.file("t", data)
    backend = rig.backend()
    rig.request(HUA.ARCHIVE, [fid])
    (item,) = rig.items(1)
    failing = CommandMover(archive_cmd="sh -c 'exit 75'", restore_cmd="true", remove_cmd="true")
    res = failing.run(rig.job(backend, [item]))
    assert res.errno == errno.EAGAIN and res.retry
    st = rig.cookie(item.cookie)
    assert (len(st["begins"]), st["ends"], st["status"]) == (1, [], "STARTED"), "not ended at the MDT"
    ok(posix(rig).run(rig.job(backend, [item], attempt=2)))
    st = rig.cookie(item.cookie)
    assert (len(st["begins"]), len(st["ends"]), st["status"]) == (2, 1, "SUCCEED")
    assert rig.state(path) & HS.ARCHIVED


def _released_and_asked_back(rig: Rig, name: str, data: bytes) -> tuple[Path, LustreBackend, hal.ActionItem]:
    """A file archived and released, and its RESTORE item from the MDT."""
    path, fid = rig.file(name, data)
    backend = rig.backend()
    rig.request(HUA.ARCHIVE, [fid])
    ok(posix(rig).run(rig.job(backend, rig.items(1))))
    rig.fs.release(path)
    rig.request(HUA.RESTORE, [fid])
    (item,) = rig.items(1)
    return path, backend, item


def test_a_restore_given_back_is_restored_by_the_next_attempt(rig: Rig) -> None:
    data = os.urandom(50_000)
    path, backend, item = _released_and_asked_back(rig, "rr", data)
    job = rig.job(backend, [item])
    job.cancelled.set()  # e.g. agentd stopping: handed back to the coordinator
    res = posix(rig).run(job)
    assert res.errno == errno.ECANCELED
    assert rig.cookie(item.cookie)["ends"] == [] and rig.state(path) & HS.RELEASED
    ok(posix(rig).run(rig.job(backend, [item], attempt=2)))
    assert path.read_bytes() == data
    st = rig.cookie(item.cookie)
    assert (len(st["begins"]), len(st["ends"]), st["status"]) == (2, 1, "SUCCEED")


def test_a_restore_given_back_after_its_first_progress_is_ended_with_the_error(rig: Rig) -> None:
    """The MDT holds that attempt's volatile file as the data FID: a next
    attempt could not end the item (EINVAL), so it is ended now; the next
    attempt finds it gone (ENOENT) and fails without touching the file."""
    path, backend, item = _released_and_asked_back(rig, "rp", os.urandom(400_000))
    job = rig.job(backend, [item])
    t, out = _run_in_thread(lambda: posix(rig, bandwidth_limit=100_000).run(job))
    until(lambda: rig.cookie(item.cookie)["progress"], 10, "a progress at the MDT")
    job.cancelled.set()  # e.g. agentd stopping: it would hand the action back
    t.join(10)
    (res,) = out
    assert res.errno == errno.ECANCELED
    st = rig.cookie(item.cookie)
    assert [e["errval"] for e in st["ends"]] == [errno.ECANCELED], "ended, not left for an attempt that cannot end it"
    again = posix(rig).run(rig.job(backend, [item], attempt=2))
    assert again.errno == errno.ENOENT and not again.retry
    assert rig.state(path) & HS.RELEASED
    assert not any(p["rc"] == -errno.EINVAL for p in rig.cookie(item.cookie)["progress"])


# ------------------------------------------------------- handles, config


def test_a_registered_handle_for_an_unused_archive_id(rig: Rig) -> None:
    backend = rig.backend(copytool_handle="register", register_archive_id=77)
    agents = rig.mdt.stats()["agents"]
    assert sorted(a["archives"] for a in agents) == [[1], [77]]
    path, fid = rig.file("g", b"registered")
    rig.request(HUA.ARCHIVE, [fid])
    ok(posix(rig).run(rig.job(backend, rig.items(1))))
    assert rig.state(path) & HS.ARCHIVED
    # a request for its archive id is not work for agentd: ended with EINVAL
    _, fid2 = rig.file("g2", b"misrouted")
    rig.api.request(rig.root, hal.UserRequest(HUA.ARCHIVE, 77, 0, (hal.UserItem(fid2),)))
    until(lambda: any(r["fid"] == str(fid2) and r["status"] == "FAILED" for r in rig.mdt.records()), 10,
          "the misrouted request ended")
    backend.close()
    until(lambda: len(rig.mdt.stats()["agents"]) == 1, 10, "agentd unregistered")


def test_configuration_of_the_lustre_backend(rig: Rig, tmp_path: Path) -> None:
    def cfg(**backend: Any) -> Any:
        ov = [Override(f"backend.{k}", v, f"--{k}") for k, v in {"type": "lustre", **backend}.items()]
        ov.append(Override("mover.archive_root", str(rig.archive), "--archive-root"))
        return load_config(None, ov, environ={})

    c = cfg(mount=str(rig.root), fsname=FSNAME, library=str(rig.lib))
    assert (c.backend.type, c.backend.copytool_handle, c.backend.register_archive_id) == ("lustre", "fake", None)
    backend = make_backend(c)
    assert isinstance(backend, LustreBackend) and backend.fsname == FSNAME
    backend.close()
    with pytest.raises(ConfigError, match="backend.fsname: required"):
        cfg(mount=str(rig.root))
    with pytest.raises(ConfigError, match="register_archive_id: required with copytool_handle register"):
        cfg(mount=str(rig.root), fsname=FSNAME, copytool_handle="register")
    with pytest.raises(ConfigError, match="backend.root: is a key of the simfs backend"):
        cfg(mount=str(rig.root), fsname=FSNAME, root="/x")
    with pytest.raises(ConfigError, match="not an existing directory"):
        make_backend(cfg(mount=str(tmp_path / "nope"), fsname=FSNAME, library=str(rig.lib)))
    with pytest.raises(ConfigError, match=r"not the root of a Lustre client mount \(it has no .lustre/fid"):
        make_backend(cfg(mount=str(tmp_path), fsname=FSNAME, library=str(rig.lib)))
    with pytest.raises(ConfigError, match="cannot load liblustreapi from .*HSM_LIBLUSTREAPI"):
        make_backend(cfg(mount=str(rig.root), fsname=FSNAME, library=str(tmp_path / "liblustreapi.so.1")))
    with pytest.raises(LustreBackendError, match="does not export llapi_hsm_action_begin"):
        LustreBackend(rig.root, FSNAME, "libc.so.6")


def test_agentd_refuses_a_bad_lustre_setup_at_start(rig: Rig, tmp_path: Path) -> None:
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "agentd.cli", "--backend", "lustre", "--mount", str(rig.root), "--fsname", FSNAME,
         "--liblustreapi", str(tmp_path / "missing.so"), "--archive-root", str(rig.archive)],
        capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "agentd: error: backend (lustre): cannot load liblustreapi" in res.stderr
