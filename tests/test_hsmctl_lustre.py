"""hsmctl on a Lustre mount, through liblustreapi: here the stand-in library
(tests/lustre_standin/) over a simulated MDT process serving a simfs tree.

The stand-in's mount *is* a simfs tree, which hsmctl would treat as simfs
(simfs wins in ``--fs auto``); ``--fs lustre`` (or ``$HSM_FS=lustre``) makes
every path go through liblustreapi, as on a real Lustre client, so the same
files can be looked at both ways and the outputs compared."""

from __future__ import annotations

import errno
import json
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hsm.fid import Fid
from hsm.hsmflags import HS, HSMA, HUA
from hsm.lustre import hal
from hsm.lustre.api import Copytool, LustreApi
from hsm.simfs import SimFS
from hsmctl import cli
from hsmctl import lustre as hl
from tests.lustre_standin.harness import MdtProcess, library_or_skip, until
from tests.test_hsmctl import hsmctl


@pytest.fixture(scope="session")
def standin_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return library_or_skip(tmp_path_factory.mktemp("liblustreapi"))


def lhsmctl(capsys: Any, *args: str) -> tuple[int, str, str]:
    """hsmctl --fs lustre, with no coordinator reachable: nothing on Lustre
    needs one."""
    return hsmctl(capsys, "--coordinators", "127.0.0.1:1", "--timeout", "2", "--fs", "lustre", *args)


def archive_now(fs: SimFS, path: Path, archive_id: int = 1) -> None:
    """Archived the way a mover does (begin + successful end), on simfs."""
    fid = fs.fid_of(path)
    begin = fs.archive_begin(fid, archive_id)
    fs.archive_end(fid, begin.data_version, 0)


class Mount:
    """A simfs tree 'lsi' at BASE/mnt served by a stand-in MDT; the working
    directory is BASE, so paths print as mnt/..."""

    def __init__(self, api: LustreApi, base: Path, mdt: MdtProcess) -> None:
        self.api = api
        self.root = base / "mnt"
        self.fs = SimFS.open(self.root)
        self.mdt = mdt
        self.copytools: list[Copytool] = []

    def file(self, name: str, data: bytes) -> str:
        p = self.root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return f"mnt/{name}"

    def fid(self, rel: str) -> Fid:
        return self.api.path2fid(rel)

    def copytool(self, archives: list[int]) -> Copytool:
        ct = self.api.copytool_register(self.root, archives, os.O_NONBLOCK)
        self.copytools.append(ct)
        return ct

    def records(self, action: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.mdt.records() if action is None or r["action"] == action]


@pytest.fixture
def mount(standin_lib: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mount]:
    monkeypatch.setenv("HSM_LIBLUSTREAPI", str(standin_lib))
    monkeypatch.delenv("HSM_FS", raising=False)
    monkeypatch.delenv("HSM_CLUSTER", raising=False)
    SimFS.create(tmp_path / "mnt", "lsi")
    m = Mount(LustreApi(standin_lib), tmp_path, MdtProcess(tmp_path / "mnt", tmp_path / "mdt.log",
                                                            loop_period=0.05))
    monkeypatch.chdir(tmp_path)
    try:
        yield m
    finally:
        for ct in m.copytools:
            ct.unregister()
        m.mdt.stop()


@pytest.fixture
def files(mount: Mount) -> list[str]:
    """new, nr (never_release), arch (archived), rel (released), a2 (archive 2)."""
    names = []
    for name, size in (("d/new", 10), ("d/nr", 20), ("d/arch", 30), ("d/rel", 4000), ("d/a2", 50)):
        names.append(mount.file(name, b"x" * size))
    mount.fs.set_flags(mount.root / "d/nr", int(HS.NORELEASE), 0)
    archive_now(mount.fs, mount.root / "d/arch")
    archive_now(mount.fs, mount.root / "d/rel")
    mount.fs.release(mount.root / "d/rel")
    archive_now(mount.fs, mount.root / "d/a2", archive_id=2)
    return names


class Mover(threading.Thread):
    """A copytool run by the test: registers, receives the MDT's lists and
    does each item (archive: read the file; restore: write *content*;
    remove: nothing), ending it with *errval* for the FIDs in *fail*."""

    def __init__(self, mount: Mount, archives: list[int], content: dict[Fid, bytes] | None = None,
                 fail: dict[Fid, int] | None = None, hold: bool = False) -> None:
        super().__init__(daemon=True)
        self.mount = mount
        self.api = mount.api
        self.ct = mount.copytool(archives)
        self.content = content or {}
        self.fail = fail or {}
        self.hold = hold  # keep items STARTED (to cancel them)
        self.items: list[hal.ActionItem] = []
        self.ended: list[int] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                r, _, _ = select.select([self.ct.fd()], [], [], 0.05)
                if not r:
                    continue
                try:
                    raw = self.ct.recv()
                except BlockingIOError:
                    continue
                parsed = hal.parse_hal(raw)
                assert parsed.ok, parsed.errors
                for item in parsed.items:
                    self.items.append(item)
                    if not self.hold and item.action != HSMA.CANCEL:
                        self.do(item)
        except BaseException as e:  # reported by the test
            self.error = e

    def do(self, item: hal.ActionItem) -> None:
        err = self.fail.get(item.fid, 0)
        if err:
            ca = self.api.action_begin(self.ct, item, is_error=True)
            ca.end(item.offset, item.length, 0, err)
        elif item.action == HSMA.ARCHIVE:
            ca = self.api.action_begin(self.ct, item)
            fd = ca.fd()
            data = b""
            try:
                while chunk := os.read(fd, 1 << 16):
                    data += chunk
            finally:
                os.close(fd)
            time.sleep(0.1)  # a copy that takes a moment: --wait sees it RUNNING
            ca.end(0, len(data), 0, 0)
        elif item.action == HSMA.RESTORE:
            ca = self.api.action_begin(self.ct, item)
            fd = ca.fd()
            try:
                os.write(fd, self.content[item.fid])
            finally:
                os.close(fd)
            ca.end(0, len(self.content[item.fid]), 0, 0)
        else:
            ca = self.api.action_begin(self.ct, item)
            ca.end(0, 0, 0, 0)
        self.ended.append(item.cookie)

    def close(self) -> None:
        self.stop.set()
        self.join(10)
        assert self.error is None, self.error


@pytest.fixture
def mover(mount: Mount) -> Iterator[Callable[..., Mover]]:
    made: list[Mover] = []

    def make(archives: list[int] | None = None, **kw: Any) -> Mover:
        m = Mover(mount, archives or [], **kw)
        m.start()
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


# ---------------------------------------------------------------------------
# state, action, set, clear: as on simfs, byte for byte


def test_state_is_byte_identical_to_the_simfs_view(mount: Mount, files: list[str], capsys: Any) -> None:
    os.symlink("new", mount.root / "d/link")
    paths = [*files, "mnt/d/link"]
    rc, simfs_out, err = hsmctl(capsys, "state", *paths)
    assert (rc, err) == (0, "")
    assert simfs_out == (
        "mnt/d/new: (0x00000000)\n"
        "mnt/d/nr: (0x00000010) never_release\n"
        "mnt/d/arch: (0x00000009) exists archived, archive_id:1\n"
        "mnt/d/rel: (0x0000000d) released exists archived, archive_id:1\n"
        "mnt/d/a2: (0x00000009) exists archived, archive_id:2\n"
        "mnt/d/link: (0x00000000)\n"
    )
    assert lhsmctl(capsys, "state", *paths) == (0, simfs_out, "")
    # the same errors, said the same way
    os.symlink("gone", mount.root / "d/dangling")
    rc, _, simfs_err = hsmctl(capsys, "state", "mnt/d/missing", "mnt/d/dangling")
    assert rc == 1 and "can't get hsm state for mnt/d/missing: No such file or directory" in simfs_err
    assert lhsmctl(capsys, "state", "mnt/d/missing", "mnt/d/dangling") == (1, "", simfs_err)
    # --json: the same document, but the archived data version (not in liblustreapi)
    rc, out, _ = lhsmctl(capsys, "state", "--json", "mnt/d/rel", "mnt/d/link")
    rc2, out2, _ = hsmctl(capsys, "state", "--json", "mnt/d/rel", "mnt/d/link")
    assert rc == rc2 == 0
    lustre_doc, simfs_doc = json.loads(out), json.loads(out2)
    for row in simfs_doc:
        row["archived_version"] = None
    assert lustre_doc == simfs_doc
    assert lustre_doc[1]["fid"] == str(mount.fs.fid_of(mount.root / "d/new"))  # the link's target


def test_hsm_fs_env_is_the_same_as_the_option(mount: Mount, files: list[str], capsys: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    mount.mdt.stop()  # the mount is gone for liblustreapi: proves the path taken
    assert hsmctl(capsys, "state", "mnt/d/new") == (0, "mnt/d/new: (0x00000000)\n", "")
    monkeypatch.setenv("HSM_FS", "lustre")
    rc, out, err = hsmctl(capsys, "state", "mnt/d/new")
    assert rc == 4 and out == ""
    assert "mnt/d/new: not on a Lustre file system (liblustreapi: Inappropriate ioctl for device)" in err
    assert hsmctl(capsys, "--fs", "simfs", "state", "mnt/d/new")[0] == 0  # the option wins
    monkeypatch.setenv("HSM_FS", "gpfs")
    rc, _, err = hsmctl(capsys, "state", "mnt/d/new")
    assert rc == 2 and "$HSM_FS: invalid value 'gpfs'" in err


def test_set_and_clear_through_llapi_hsm_state_set(mount: Mount, files: list[str], capsys: Any) -> None:
    assert lhsmctl(capsys, "set", "--norelease", "--noarchive", "mnt/d/new") == (0, "", "")
    assert lhsmctl(capsys, "set", "--dirty", "mnt/d/arch") == (0, "", "")
    assert mount.fs.hsm_state(mount.root / "d/new").flags == HS.NORELEASE | HS.NOARCHIVE
    assert mount.fs.hsm_state(mount.root / "d/arch").flags == HS.EXISTS | HS.ARCHIVED | HS.DIRTY
    rc, lustre_out, _ = lhsmctl(capsys, "state", "mnt/d/new", "mnt/d/arch")
    assert hsmctl(capsys, "state", "mnt/d/new", "mnt/d/arch") == (0, lustre_out, "")
    assert lustre_out == ("mnt/d/new: (0x00000030) never_release never_archive\n"
                          "mnt/d/arch: (0x0000000b) exists dirty archived, archive_id:1\n")
    assert lhsmctl(capsys, "clear", "--noarchive", "mnt/d/new") == (0, "", "")
    assert mount.fs.hsm_state(mount.root / "d/new").flags == HS.NORELEASE
    # errors: the MDT's (dirty needs exists: EINVAL, all it says, as with lfs);
    # a missing file as on simfs
    rc, _, simfs_err = hsmctl(capsys, "set", "--dirty", "mnt/d/new")
    assert rc == 1 and "DIRTY without EXISTS" in simfs_err
    assert lhsmctl(capsys, "set", "--dirty", "mnt/d/new") == (
        1, "", "hsmctl set: can't change hsm flags for mnt/d/new: Invalid argument\n")
    rc, _, simfs_err = hsmctl(capsys, "clear", "--dirty", "mnt/d/missing")
    assert rc == 1 and "can't change hsm flags for mnt/d/missing: No such file or directory" in simfs_err
    assert lhsmctl(capsys, "clear", "--dirty", "mnt/d/missing") == (1, "", simfs_err)
    assert lhsmctl(capsys, "set", "mnt/d/new")[0] == 2  # no flag: usage


def test_action_is_byte_identical_to_the_simfs_view(mount: Mount, files: list[str], capsys: Any,
                                                    coordinator: Any) -> None:
    """The same file with an archive waiting at the coordinator (simfs view)
    and at the MDT (Lustre view) reads the same; NOOP the same."""
    addr = str(coordinator.address)
    tls = coordinator.args()  # the admin's certificate
    assert hsmctl(capsys, "--coordinators", addr, *tls, "archive", "mnt/d/new") == (0, "", "")
    assert lhsmctl(capsys, "archive", "mnt/d/new") == (0, "", "")
    paths = ["mnt/d/new", "mnt/d/arch"]
    rc, simfs_out, err = hsmctl(capsys, "--coordinators", addr, *tls, "action", *paths)
    assert (rc, err) == (0, "")
    assert simfs_out == "mnt/d/new: ARCHIVE waiting (from 0 to EOF)\nmnt/d/arch: NOOP\n"
    assert lhsmctl(capsys, "action", *paths) == (0, simfs_out, "")
    rc, out, _ = lhsmctl(capsys, "action", "--json", *paths)
    assert rc == 0
    fid = str(mount.fid("mnt/d/new"))
    assert json.loads(out) == [
        {"path": "mnt/d/new", "fid": fid, "action": "ARCHIVE", "progress": "waiting",
         "action_id": None, "state": "WAITING", "offset": 0, "length": 2**64 - 1, "bytes_moved": 0},
        {"path": "mnt/d/arch", "fid": str(mount.fid("mnt/d/arch")), "action": "NOOP", "progress": "",
         "action_id": None, "state": None, "offset": 0, "length": -1, "bytes_moved": 0},
    ]


def test_lustre_action_line_is_lfs_hsm_action() -> None:
    """lfs.c lfs_hsm_action: bytes moved for a running ARCHIVE/RESTORE (in
    hca_location.length), the extent otherwise, names by hsm_user_action2name."""
    eof = 2**64 - 1
    line = cli.lustre_action_line
    assert line("f", hal.CurrentAction(0, HUA.NONE)) == "f: NOOP"
    assert line("f", hal.CurrentAction(2, HUA.RESTORE, 0, 4096)) == "f: RESTORE running (4096 bytes moved)"
    assert line("f", hal.CurrentAction(1, HUA.ARCHIVE, 0, eof)) == "f: ARCHIVE waiting (from 0 to EOF)"
    assert line("f", hal.CurrentAction(2, HUA.REMOVE, 0, eof)) == "f: REMOVE running (from 0 to EOF)"
    assert line("f", hal.CurrentAction(1, HUA.RELEASE, 5, 10)) == "f: RELEASE waiting (from 5 to 15)"
    assert line("f", hal.CurrentAction(3, 99, 0, eof)) == "f: UNKNOWN done (from 0 to EOF)"


# ---------------------------------------------------------------------------
# requests go to the MDT


def test_archive_of_five_files_reaches_the_mdt(mount: Mount, capsys: Any) -> None:
    paths = [mount.file(f"f{i}", b"data%d" % i) for i in range(5)]
    rc, out, err = lhsmctl(capsys, "archive", "-a", "2", "-D", "tag=p1", *paths)
    assert (rc, out, err) == (0, "", "")  # no coordinator reachable, none needed
    recs = mount.records()
    assert sorted(r["fid"] for r in recs) == sorted(str(mount.fid(p)) for p in paths)
    assert {(r["action"], r["archive_id"], r["status"]) for r in recs} == {("ARCHIVE", 2, "WAITING")}
    assert len({r["cookie"] for r in recs}) == 5
    rc, out, _ = lhsmctl(capsys, "action", *paths)
    assert out == "".join(f"{p}: ARCHIVE waiting (from 0 to EOF)\n" for p in paths)


def test_requests_say_per_file_what_the_mdt_skips_or_refuses(mount: Mount, files: list[str],
                                                            capsys: Any) -> None:
    mount.fs.set_flags(mount.root / "d/arch", int(HS.DIRTY), 0)
    rc, out, err = lhsmctl(capsys, "-v", "archive", "-a", "2", "mnt/d/new", "mnt/d/a2", "mnt/d/arch")
    assert rc == 1
    assert "mnt/d/new: ARCHIVE sent to the MDT" in out
    assert "mnt/d/a2: ARCHIVE not needed" in out
    assert ("mnt/d/arch: ARCHIVE refused: the file's copy is in archive 1, not 2 (remove it first) "
            "(Operation not permitted)") in err
    assert [r["fid"] for r in mount.records()] == [str(mount.fid("mnt/d/new"))]
    rc, _, err = lhsmctl(capsys, "restore", "mnt/d/new")
    assert rc == 0 and err == ""  # not needed: silent, like lfs
    rc, _, err = lhsmctl(capsys, "remove", "mnt/d/rel")
    assert rc == 1 and "mnt/d/rel: REMOVE refused: the file is released (restore it first)" in err
    assert len(mount.records()) == 1


def test_paths_symlinks_and_exit_codes_as_on_simfs(mount: Mount, files: list[str], tmp_path: Path,
                                                   capsys: Any) -> None:
    os.symlink("new", mount.root / "d/link")
    (tmp_path / "plain").write_text("x")
    for args in (["mnt/d/new", "mnt/d/nope"], ["mnt/d/new", "mnt/d/link"], ["mnt/d"]):
        rc, _, simfs_err = hsmctl(capsys, "--coordinators", "127.0.0.1:1", "archive", *args)
        assert lhsmctl(capsys, "archive", *args) == (rc, "", simfs_err)
        assert rc == 1 and "nothing submitted" in simfs_err or "not a regular file" in simfs_err
    rc, _, err = lhsmctl(capsys, "archive", "mnt/d/link")
    assert rc == 1 and "'mnt/d/link' is not a regular file (a symbolic link" in err
    # off the mount: liblustreapi says ENOTTY -> exit 4
    rc, _, err = lhsmctl(capsys, "archive", "mnt/d/new", "plain")
    assert rc == 4 and "plain: not on a Lustre file system (liblustreapi: Inappropriate ioctl for device)" in err
    assert "nothing submitted" in err
    rc, _, err = lhsmctl(capsys, "state", "plain")
    assert rc == 4 and "plain: not on a Lustre file system" in err
    assert mount.records() == []
    # a link into the tree is followed by state and refused by release
    assert lhsmctl(capsys, "state", "mnt/d/link") == (0, "mnt/d/link: (0x00000000)\n", "")
    rc, _, err = lhsmctl(capsys, "release", "mnt/d/link")
    assert rc == 1 and "not a regular file" in err


def test_recursive_filelist_and_null_stream_to_the_mdt(mount: Mount, files: list[str], tmp_path: Path,
                                                       capsys: Any) -> None:
    mount.file("t/a", b"a")
    mount.file("t/sub/b", b"b")
    mount.file("t/odd\nname", b"c")
    os.symlink("a", mount.root / "t/link")
    rc, out, err = lhsmctl(capsys, "archive", "-r", "mnt/t")
    assert (rc, err) == (0, "")
    assert out == "sent to the MDT 3, not needed 0, rejected 0\n"
    assert len(mount.records("ARCHIVE")) == 3
    # -0 --filelist: a name with a newline, a bad entry reported and skipped
    (tmp_path / "list").write_bytes(b"mnt/d/rel\0mnt/d/missing\0mnt/t/odd\nname\0mnt/d/new\0")
    rc, out, err = lhsmctl(capsys, "restore", "-0", "--filelist", "list")
    assert rc == 1
    assert out == "sent to the MDT 1, not needed 2, rejected 0, errors 1\n"
    assert "cannot stat 'mnt/d/missing': No such file or directory" in err
    assert [r["fid"] for r in mount.records("RESTORE")] == [str(mount.fid("mnt/d/rel"))]
    # the FID operands of lfs -m MNT
    fid = mount.fid("mnt/d/new")
    rc, out, err = lhsmctl(capsys, "-v", "remove", "-m", "mnt", str(fid))
    assert (rc, err) == (0, "")
    assert f"{fid}: REMOVE not needed" in out  # never archived
    assert lhsmctl(capsys, "archive", "-m", "mnt", "--fid", str(fid)) == (0, "", "")
    assert str(fid) in [r["fid"] for r in mount.records("ARCHIVE")]


def test_more_files_than_one_request_holds_are_sent_in_several(mount: Mount, capsys: Any) -> None:
    """The client refuses a request of MDS_MAXREQSIZE / 3 bytes (E2BIG): 52
    files a request, at most."""
    assert hl.max_request_items(0) == 52
    paths = [mount.file(f"many/{i:03}", b"z") for i in range(60)]
    assert lhsmctl(capsys, "archive", *paths) == (0, "", "")
    assert len(mount.records("ARCHIVE")) == 60
    big = "k=" + "v" * hl.max_request_data()
    rc, _, err = lhsmctl(capsys, "archive", "--data", big, "mnt/many/000")
    assert rc == 2 and "does not fit in a Lustre HSM request" in err


def test_archive_wait_returns_once_the_copytool_ended_the_items(mount: Mount, mover: Callable[..., Mover],
                                                                capsys: Any) -> None:
    paths = [mount.file(f"w{i}", os.urandom(1000)) for i in range(3)]
    m = mover([1])
    rc, out, err = lhsmctl(capsys, "-v", "archive", "--wait", "-D", "tag=w", *paths)
    assert (rc, err) == (0, ""), err
    for p in paths:
        assert f"{p}: ARCHIVE succeeded" in out
        assert mount.fs.hsm_state(mount.root / p[4:]).flags == HS.EXISTS | HS.ARCHIVED
    assert len(m.ended) == 3 and {i.data for i in m.items} == {b"tag=w"}
    # -r with --wait: the summary lines
    mount.fs.set_flags(mount.root / "w0", int(HS.DIRTY), 0)
    rc, out, err = lhsmctl(capsys, "archive", "--wait", "-r", "mnt")
    assert (rc, err) == (0, "")
    assert out == "sent to the MDT 1, not needed 2, rejected 0\nsucceeded 1, failed 0\n"


def test_wait_reports_a_failed_archive_and_gives_up_at_the_deadline(mount: Mount, files: list[str],
                                                                     mover: Callable[..., Mover],
                                                                     capsys: Any) -> None:
    bad = mount.file("bad", b"b")
    mover([1], fail={mount.fid(bad): errno.EIO})
    rc, out, err = lhsmctl(capsys, "archive", "--wait", bad, "mnt/d/new")
    assert rc == 1
    assert "mnt/bad: ARCHIVE failed or was canceled: the file is not archived (exists)" in err
    assert "mnt/d/new" not in err
    # archive 3: no copytool serves it, the request waits at the MDT
    late = mount.file("late", b"l")
    start = time.monotonic()
    rc, _, err = lhsmctl(capsys, "archive", "--wait", "--deadline", "0.5", "-a", "3", late)
    assert rc == 1 and time.monotonic() - start < 5
    assert "gave up waiting after 0.5 s: the MDT still has 1 archive request(s) waiting or running" in err


def test_release_then_restore_wait_through_the_mdt(mount: Mount, files: list[str], mover: Callable[..., Mover],
                                                   capsys: Any) -> None:
    data = os.urandom(5000)
    p = mount.file("r", data)
    archive_now(mount.fs, mount.root / "r")
    assert lhsmctl(capsys, "release", p) == (0, "", "")
    assert lhsmctl(capsys, "state", p) == (0, f"{p}: (0x0000000d) released exists archived, archive_id:1\n", "")
    assert os.path.getsize(mount.root / "r") == 5000
    # refusals explained as on simfs
    rc, _, simfs_err = hsmctl(capsys, "release", "mnt/d/new", "mnt/d/nr")
    assert lhsmctl(capsys, "release", "mnt/d/new", "mnt/d/nr") == (1, "", simfs_err)
    assert "cannot release 'mnt/d/new': the file is not archived (Operation not permitted)" in simfs_err
    mover([1], content={mount.fid(p): data})
    rc, out, err = lhsmctl(capsys, "restore", "--wait", p)
    assert (rc, out, err) == (0, "", "")
    assert (mount.root / "r").read_bytes() == data
    assert lhsmctl(capsys, "state", p) == (0, f"{p}: (0x00000009) exists archived, archive_id:1\n", "")


def test_cancel_by_path_sends_hua_cancel_to_the_mdt(mount: Mount, mover: Callable[..., Mover],
                                                   capsys: Any) -> None:
    p = mount.file("c", b"c" * 100)
    m = mover([1], hold=True)
    assert lhsmctl(capsys, "archive", p) == (0, "", "")
    until(lambda: len(m.items) == 1, 10, "the archive to reach the copytool")
    rc, out, err = lhsmctl(capsys, "-v", "cancel", p)
    assert (rc, err) == (0, "")
    assert f"{p}: CANCEL sent to the MDT" in out
    until(lambda: len(m.items) == 2, 10, "the cancel to reach the copytool")
    archive, cancel = m.items
    assert (cancel.action, cancel.fid, cancel.cookie) == (HSMA.CANCEL, archive.fid, archive.cookie)
    assert [r["status"] for r in mount.records("ARCHIVE")] == ["CANCELED"]
    assert lhsmctl(capsys, "action", p) == (0, f"{p}: NOOP\n", "")
    # by FID on the mount, as lfs hsm_cancel -m
    assert lhsmctl(capsys, "cancel", "-m", "mnt", "--fid", str(archive.fid)) == (0, "", "")


# ---------------------------------------------------------------------------
# which paths are Lustre


def test_auto_never_loads_liblustreapi_for_simfs_or_other_paths(mount: Mount, files: list[str],
                                                                tmp_path: Path, capsys: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HSM_LIBLUSTREAPI", str(tmp_path / "no-such-liblustreapi.so.1"))
    (tmp_path / "plain").write_text("x")
    assert hsmctl(capsys, "state", "mnt/d/nr") == (0, "mnt/d/nr: (0x00000010) never_release\n", "")
    rc, _, err = hsmctl(capsys, "state", "plain")
    assert rc == 4 and "plain: not on a simfs or Lustre file system" in err
    assert not hl.on_lustre_mount(tmp_path)
    rc, _, err = hsmctl(capsys, "--fs", "lustre", "state", "mnt/d/nr")
    assert rc == 1 and "cannot load liblustreapi" in err
    rc, _, err = hsmctl(capsys, "--fs", "simfs", "state", "plain")
    assert rc == 4 and "plain: not on a simfs (--fs simfs) file system" in err


def test_auto_takes_a_lustre_client_mount_to_liblustreapi(mount: Mount, files: list[str], capsys: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """What statfs() says decides in auto mode (simulated here: the stand-in's
    mount is a simfs tree on a local file system)."""

    def not_simfs(path: Any) -> Path:
        raise LookupError("hidden")

    monkeypatch.setattr(SimFS, "find_root", staticmethod(not_simfs))
    monkeypatch.setattr(cli, "on_lustre_mount", lambda path: True)
    mount.fs.set_flags(mount.root / "d/new", int(HS.NOARCHIVE), 0)
    assert hsmctl(capsys, "state", "mnt/d/new") == (0, "mnt/d/new: (0x00000020) never_archive\n", "")
    mount.mdt.stop()  # and it really is liblustreapi answering
    rc, _, err = hsmctl(capsys, "state", "mnt/d/new")
    assert rc == 4 and "not on a Lustre file system (liblustreapi: Inappropriate ioctl" in err


def test_help_says_what_works_on_lustre() -> None:
    parser = cli.build_parser()
    text = parser.format_help()
    for words in ("on Lustre (--fs MODE, else $HSM_FS, else auto)", "LL_SUPER_MAGIC",
                  "llapi_hsm_request", "--wait on Lustre: polls llapi_hsm_current_action",
                  "It cannot", "succeeded N, failed N"):
        assert words in text


# ---------------------------------------------------------------------------
# what the simfs and the Lustre paths share: release refusals, the -r walk

_NOT_ARCHIVED = "the file is not archived"
_DIRTY = "the file is dirty (changed since it was archived)"
_NORELEASE = "the file is marked never_release"
_LOST = "the archived copy is lost"
_RELEASED = "the file is released already"
_LUSTRE_ELSE = "not allowed now (the data changed since it was archived, or the file is in use)"
_DV_DIFFERS = "the file changed since it was archived (data version differs)"
_SIMFS_ELSE = "not allowed in its HSM state"

_A, _E, _R = HS.ARCHIVED, HS.EXISTS, HS.RELEASED


@pytest.mark.parametrize(("flags", "why"), [
    (0, _NOT_ARCHIVED),
    (_R, _RELEASED),
    (_R | _E | _A, _RELEASED),
    (_R | HS.NORELEASE, _RELEASED),  # RELEASED is looked at first
    (_R | _A | HS.DIRTY | HS.LOST, _RELEASED),
    (_E | _A, _LUSTRE_ELSE),
    (_E | _A | HS.NOARCHIVE, _LUSTRE_ELSE),
    (_E | HS.DIRTY, _NOT_ARCHIVED),
    (HS.NORELEASE | HS.LOST, _NOT_ARCHIVED),
    (_E | _A | HS.DIRTY | HS.NORELEASE | HS.LOST, _DIRTY),
    (_E | _A | HS.NORELEASE | HS.LOST, _NORELEASE),
    (_E | _A | HS.LOST, _LOST),
])
def test_lustre_release_refusal_from_the_flags(flags: int, why: str) -> None:
    assert hl.release_refusal(int(flags)) == why


class _StubSimFS:
    """What cli._release_refusal asks of a SimFS: hsm_state and data_version."""

    def __init__(self, flags: int, archived_version: int, version: int | Exception,
                 state_error: Exception | None = None) -> None:
        self.flags, self.archived_version = flags, archived_version
        self.version, self.state_error = version, state_error

    def hsm_state(self, path: str) -> Any:
        if self.state_error is not None:
            raise self.state_error
        return type("Attrs", (), {"flags": self.flags, "archive_id": 1,
                                  "archived_version": self.archived_version})()

    def data_version(self, path: str) -> int:
        if isinstance(self.version, Exception):
            raise self.version
        return self.version


def _simfs_refusal(flags: int, same_version: bool = True, **kw: Any) -> str:
    fs: Any = _StubSimFS(int(flags), 3, 3 if same_version else 4, **kw)
    return cli._release_refusal(fs, "f")


@pytest.mark.parametrize(("flags", "same_version", "why"), [
    (0, True, _NOT_ARCHIVED),
    (_R, True, _NOT_ARCHIVED),  # simfs never looks at RELEASED
    (_R | _E | _A, True, _SIMFS_ELSE),
    (_R | _E | _A, False, _DV_DIFFERS),
    (_R | _A | HS.DIRTY, True, _DIRTY),
    (_E | _A, True, _SIMFS_ELSE),
    (_E | _A, False, _DV_DIFFERS),
    (_E | _A | HS.NOARCHIVE, False, _DV_DIFFERS),
    (HS.NORELEASE, False, _NOT_ARCHIVED),
    (_E | _A | HS.DIRTY | HS.NORELEASE | HS.LOST, False, _DIRTY),
    (_E | _A | HS.NORELEASE | HS.LOST, False, _NORELEASE),
    (_E | _A | HS.LOST, False, _LOST),
])
def test_simfs_release_refusal_from_the_flags_then_the_data_version(flags: int, same_version: bool,
                                                                     why: str) -> None:
    assert _simfs_refusal(flags, same_version) == why


def test_simfs_release_refusal_when_the_state_cannot_be_read() -> None:
    # both are read before any flag is looked at
    assert _simfs_refusal(0, state_error=FileNotFoundError(errno.ENOENT, "gone")) == "not allowed"
    assert _simfs_refusal(0, state_error=ValueError("metadata")) == "not allowed"
    fs: Any = _StubSimFS(0, 3, OSError(errno.EIO, "eio"))
    assert cli._release_refusal(fs, "f") == "not allowed"
    fs = _StubSimFS(0, 3, ValueError("not in the tree"))
    assert cli._release_refusal(fs, "f") == "not allowed"


def _first_reason(flags: int, rules: list[tuple[int, int, str]], otherwise: str) -> str:
    """The first rule (mask, value, reason) with ``flags & mask == value``."""
    return next((why for mask, value, why in rules if flags & mask == value), otherwise)


def test_release_refusals_of_every_flag_combination() -> None:
    """The first reason that applies, in each path's order: Lustre looks at
    RELEASED first and knows no data version; simfs never looks at
    RELEASED and ends with the data version."""
    shared = [(_A, 0, _NOT_ARCHIVED), (HS.DIRTY, HS.DIRTY, _DIRTY),
              (HS.NORELEASE, HS.NORELEASE, _NORELEASE), (HS.LOST, HS.LOST, _LOST)]
    bits = [_R, _E, _A, HS.DIRTY, HS.NORELEASE, HS.NOARCHIVE, HS.LOST]
    for n in range(1 << len(bits)):
        flags = sum(int(b) for i, b in enumerate(bits) if n >> i & 1)
        lustre = _first_reason(flags, [(_R, _R, _RELEASED), *shared], _LUSTRE_ELSE)
        assert hl.release_refusal(flags) == lustre, hex(flags)
        simfs = _first_reason(flags, shared, _SIMFS_ELSE)
        assert _simfs_refusal(flags, same_version=True) == simfs, hex(flags)
        simfs = _first_reason(flags, shared, _DV_DIFFERS)
        assert _simfs_refusal(flags, same_version=False) == simfs, hex(flags)


@pytest.fixture
def walk_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[SimFS, Path]:
    """A simfs tree with metadata dirs at its root and dirs of the same names
    lower down, links (to a file, to a directory), a FIFO and files made out
    of order; the working directory is its c/."""
    fs = SimFS.create(tmp_path / "fs", "walk")
    root = fs.root
    for rel in ("b.txt", "a.txt", "z/f", "c/vanish", "c/g", "c/e/h", "c/.simfs/x", "c/.lustre/y"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    fs.fid_of(root / "a.txt")  # fills .lustre/fid and .simfs/dv
    os.symlink("../a.txt", root / "c/link")
    os.symlink("../z", root / "c/dirlink")
    os.mkfifo(root / "c/fifo")
    monkeypatch.chdir(root / "c")
    return fs, root


def test_walks_list_regular_files_sorted_a_dir_before_its_subdirs(walk_tree: tuple[SimFS, Path]) -> None:
    fs, root = walk_tree
    c = [root / "c/g", root / "c/vanish"]  # no link, no FIFO; dirlink is not entered
    top = [root / "a.txt", root / "b.txt"]
    # simfs skips the metadata at the tree's root only
    c_simfs = [*c, root / "c/.lustre/y", root / "c/.simfs/x", root / "c/e/h"]
    assert list(fs.walk()) == [*top, *c_simfs, root / "z/f"]
    assert list(fs.walk(root)) == [*top, *c_simfs, root / "z/f"]
    assert list(fs.walk(root / "c")) == c_simfs
    # Lustre skips .lustre and .simfs at every level
    c_lustre = [*c, root / "c/e/h"]
    assert list(hl.LustreFs.walk(str(root))) == [*top, *c_lustre, root / "z/f"]
    assert list(hl.LustreFs.walk(str(root / "c"))) == c_lustre
    # a link given as the top is resolved; a relative top is from the cwd
    assert list(fs.walk(root / "c/dirlink")) == [root / "z/f"]
    assert list(hl.LustreFs.walk(str(root / "c/dirlink"))) == [root / "z/f"]
    assert list(fs.walk("e")) == [root / "c/e/h"]
    assert list(hl.LustreFs.walk("e")) == [root / "c/e/h"]
    assert list(hl.LustreFs.walk(".")) == c_lustre
    # the top itself is never skipped by the Lustre walk
    assert root / ".simfs/fsname" in list(hl.LustreFs.walk(str(root / ".simfs")))


def test_walks_skip_a_file_gone_before_its_lstat(walk_tree: tuple[SimFS, Path],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fs, root = walk_tree
    real_lstat = os.lstat

    def lstat(path: Any, *a: Any, **kw: Any) -> os.stat_result:
        name = os.path.basename(os.fspath(path))
        if name == "vanish":
            raise FileNotFoundError(errno.ENOENT, "gone", path)
        if name == "g":
            raise PermissionError(errno.EACCES, "denied", path)
        return real_lstat(path, *a, **kw)

    monkeypatch.setattr(os, "lstat", lstat)
    with pytest.raises(PermissionError):  # any other error ends the walk
        list(fs.walk(root / "c"))
    with pytest.raises(PermissionError):
        list(hl.LustreFs.walk(str(root / "c")))
    os.unlink(root / "c/g")
    assert list(fs.walk(root / "c")) == [root / "c/.lustre/y", root / "c/.simfs/x", root / "c/e/h"]
    assert list(hl.LustreFs.walk(str(root / "c"))) == [root / "c/e/h"]


def test_walk_errors_simfs_refuses_lustre_lists_nothing(walk_tree: tuple[SimFS, Path],
                                                       tmp_path: Path) -> None:
    fs, root = walk_tree
    # both are lazy: nothing is looked at before the first file is asked for
    fs.walk(root / ".simfs")
    hl.LustreFs.walk(str(root / "missing"))
    for meta in (root / ".simfs", root / ".lustre/fid"):
        with pytest.raises(ValueError, match="is simfs metadata, not part of the tree"):
            list(fs.walk(meta))
    with pytest.raises(ValueError, match="is not inside simfs tree"):
        list(fs.walk(tmp_path))
    for not_a_dir in (root / "a.txt", root / "missing"):
        with pytest.raises(NotADirectoryError):
            list(fs.walk(not_a_dir))
        # ... where the Lustre walk, as os.walk, lists nothing
        assert list(hl.LustreFs.walk(str(not_a_dir))) == []
