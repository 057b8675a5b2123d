"""The whole Lustre path on the stand-in, every part a real process but the
coordinator: requests made like ``lfs hsm_archive`` on a simfs mount -> the
simulated MDT -> hsm-bridge -> a coordinator (4 shards) -> agentd with
``backend: lustre`` and the posix mover -> ``llapi_hsm_action_begin /
progress / end`` by cookie -> the file's HSM state at the MDT."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from agentd.movers.posix import object_path
from hsm.client import state_name
from hsm.fid import Fid
from hsm.hsmflags import HS, HUA
from hsm.lustre import hal
from tests.cluster import Pki, tls_replica
from tests.lustre_standin import protocol as P
from tests.lustre_standin.harness import library_or_skip, until
from tests.test_bridge import FSNAME
from tests.test_bridge import Rig as BridgeRig

pytestmark = pytest.mark.slow  # real processes


class Rig(BridgeRig):
    """test_bridge's rig (simfs mount, MDT process, hsm-bridge process, a
    coordinator) plus an agentd process with the lustre backend."""

    def __init__(self, tmp: Path, lib: Path, coordinator: Any, pki: Pki, **mdt: Any) -> None:
        super().__init__(tmp, lib, coordinator, pki, **mdt)
        self.archive = tmp / "archive"
        self.archive.mkdir()
        self.agentd: subprocess.Popen[bytes] | None = None
        self.agentd_log = tmp / "agentd.log"

    def start_agentd(self, *extra: str) -> None:
        env = dict(os.environ)
        env.pop("HSM_CLUSTER", None)
        env.pop("HSM_LIBLUSTREAPI", None)  # the flag says which library
        self.pki.issue("lmover", "agent")
        with open(self.agentd_log, "ab") as log:
            self.agentd = subprocess.Popen(
                [sys.executable, "-m", "agentd.cli", "--coordinators", self.address, "--agent-id", "lmover",
                 *self.pki.args("lmover"),
                 "--backend", "lustre", "--mount", str(self.fs.root), "--fsname", FSNAME,
                 "--liblustreapi", str(self.lib), "--archive-root", str(self.archive),
                 "--log-level", "debug", *extra], stdout=log, stderr=log, env=env)

    def request_in_batches(self, action: int, fids: list[Fid], size: int = 50) -> None:
        for i in range(0, len(fids), size):
            self.api.request(self.fs.root, hal.UserRequest(action, 0, 0, tuple(hal.UserItem(f) for f in
                                                                                   fids[i:i + size])))

    def flags(self, fid: Fid) -> int:
        return int(self.fs.hsm_state(self.fs.path_of(fid)).flags)

    def stop(self) -> None:
        if self.agentd is not None and self.agentd.poll() is None:
            self.agentd.send_signal(signal.SIGTERM)
            try:
                self.agentd.wait(30)
            except subprocess.TimeoutExpired:
                self.agentd.kill()
                self.agentd.wait()
        super().stop()


@pytest.fixture
def rig(tmp_path: Path, coordinator_factory: Any) -> Iterator[Rig]:
    lib = library_or_skip(tmp_path / "lib")
    r = Rig(tmp_path, lib, *tls_replica(coordinator_factory, tmp_path / "pki", shards=4), max_requests=1000)
    try:
        yield r
    finally:
        r.stop()


def test_300_files_archived_released_and_restored_by_three_readers_one_begin_and_end_per_cookie(
        rig: Rig) -> None:
    rig.start_bridge("--mdt-max-requests", "1000")
    rig.start_agentd("--slots", "archive=8,restore=8,remove=2")
    rnd = random.Random(11)
    sizes = [0, 1, 100, 4095, 4096, 65_537, 150_000]
    data: dict[Fid, bytes] = {}
    for i in range(300):
        p = rig.fs.root / f"d{i % 7}" / f"f{i:03d}"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(rnd.randbytes(sizes[i % len(sizes)] + rnd.randrange(50)))
        data[rig.api.path2fid(p)] = p.read_bytes()
    fids = list(data)

    rig.request_in_batches(HUA.ARCHIVE, fids)  # lfs hsm_archive
    until(lambda: all(rig.flags(f) & HS.ARCHIVED for f in fids), 180, "300 files ARCHIVED", interval=0.2)
    assert not any(rig.flags(f) & HS.DIRTY for f in fids)
    for f in fids:
        assert object_path(rig.archive, f).read_bytes() == data[f]

    for f in fids:
        rig.fs.release(rig.fs.path_of(f))
    assert all(rig.flags(f) & HS.RELEASED for f in fids)

    # three clients read every file at once: each open of a released file
    # is a blocking RESTORE at the MDT (one per file: the restore handle)
    errors: list[BaseException] = []

    def reader() -> None:
        client = P.MdtClient(rig.fs.root)
        with ThreadPoolExecutor(16) as pool:
            for fut in [pool.submit(client.open, rig.fs.path_of(f), 120.0) for f in fids]:
                try:
                    fut.result()
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for t in readers:
        t.start()
    for t in readers:
        t.join(240)
    assert not any(t.is_alive() for t in readers), "every open answered"
    assert not errors, errors[:3]
    for f in fids:
        assert rig.fs.path_of(f).read_bytes() == data[f], f"{f}: restored data differs"
        assert not rig.flags(f) & HS.RELEASED

    # the MDT saw exactly one begin and one end per cookie, all succeeded
    stats = rig.mdt.stats()
    cookies = stats["cookies"]
    by_action: dict[str, int] = {}
    for cookie, st in cookies.items():
        by_action[st["action"]] = by_action.get(st["action"], 0) + 1
        assert (len(st["begins"]), len(st["ends"]), st["status"]) == (1, 1, "SUCCEED"), (cookie, st)
        assert st["ends"][0]["errval"] == 0 and st["begins"][0]["rc"] == 0
    assert by_action == {"ARCHIVE": 300, "RESTORE": 300}, "one restore per file for three readers"
    assert not stats["running"] and not stats["restore_handles"]
    # only the bridge is an agent of the MDT: agentd's handle is faked
    assert len(stats["agents"]) == 1

    # the MDT hears the end before the coordinator hears the Done
    def all_succeeded() -> list[Any]:
        acts = list(rig.client.list_actions(include_terminal=True))
        return acts if {state_name(a.state) for a in acts} == {"SUCCEEDED"} else []

    actions = until(all_succeeded, 30, "600 actions SUCCEEDED at the coordinator", interval=0.2)
    assert len(actions) == 600 and all(a.agent == "lmover" and a.attempt == 1 for a in actions)


def test_a_cancel_at_the_mdt_stops_the_running_transfer_on_its_mover(rig: Rig) -> None:
    rig.start_bridge("--mdt-max-requests", "1000")
    rig.start_agentd("--bandwidth-limit", "100K")
    path = rig.fs.root / "big"
    path.write_bytes(os.urandom(3_000_000))  # 30 s at 100 KiB/s
    fid = rig.api.path2fid(path)
    rig.request_in_batches(HUA.ARCHIVE, [fid])

    def running() -> Any:
        acts = [a for a in rig.client.list_actions(include_terminal=True)]
        return acts and state_name(acts[0].state) == "STARTED" and acts[0].bytes_done > 0 and acts[0]

    until(running, 30, "the archive moving data")
    (rec,) = [r for r in rig.mdt.records() if r["action"] == "ARCHIVE"]
    rig.request_in_batches(HUA.CANCEL, [fid])  # lfs hsm_cancel
    until(lambda: state_name(next(iter(rig.client.list_actions(include_terminal=True))).state) == "CANCELED",
          10, "the action CANCELED at the coordinator")
    until(lambda: rig.mdt.cookie(rec["cookie"])["ends"], 10, "the item ended at the MDT")
    st = rig.mdt.cookie(rec["cookie"])
    assert st["canceled"] and [e["errval"] for e in st["ends"]] == [errno.ECANCELED], st
    assert len(st["begins"]) == 1
    assert not rig.mdt.stats()["running"]
    log = rig.agentd_log.read_text()
    assert "cancel received" in log
    assert not object_path(rig.archive, fid).exists()
    assert not list(object_path(rig.archive, fid).parent.glob(fid.bare + "_tmp*")), "the partial copy is gone"
    assert not rig.flags(fid) & HS.ARCHIVED


def test_catalog_restore_recreates_a_deleted_file_on_lustre_through_llapi_hsm_import(rig: Rig) -> None:
    """``hsmctl catalog restore --to PATH FID`` on a Lustre mount: the file
    archived through the MDT is deleted; hsmctl imports a released file at
    PATH with llapi_hsm_import (the stand-in library, root), gives it the
    old FID's copy and sends the RESTORE to the MDT, which the bridge hands
    to the coordinator: the mover reads the object the catalog names (the
    old FID's), and PATH has the bytes, owner and mode back."""
    from coordinator.config import ADMIN_CERT

    rig.start_bridge("--mdt-max-requests", "1000")
    rig.start_agentd()
    data = os.urandom(70_001)
    path = rig.fs.root / "proj" / "b.dat"
    path.parent.mkdir()
    path.write_bytes(data)
    os.chown(path, 1234, 567)
    os.chmod(path, 0o640)
    old = rig.api.path2fid(path)
    rig.request_in_batches(HUA.ARCHIVE, [old])
    until(lambda: rig.flags(old) & HS.ARCHIVED, 60, "the file ARCHIVED", interval=0.1)
    until(lambda: rig.client.copies_of(old, FSNAME), 30, "its copy in the catalog", interval=0.1)
    path.unlink()

    def hsmctl(*args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, HSM_LIBLUSTREAPI=str(rig.lib))
        return subprocess.run([sys.executable, "-m", "hsmctl.cli", "--coordinators", rig.address,
                               *rig.pki.args(ADMIN_CERT), "--fs", "lustre", "catalog", "restore", *args],
                              capture_output=True, text=True, timeout=120, env=env)

    dest = rig.fs.root / "proj" / "b.back"
    r = hsmctl("--to", str(dest), "--timeout", "60", str(old))
    assert r.returncode == 0, r.stdout + r.stderr
    new = rig.api.path2fid(dest)
    assert new != old
    lines = r.stdout.splitlines()
    assert lines == [f"recreated {dest} as {new} (released, 70001 bytes, 1234:567, mode 0640) from the copy of "
                     f"{old} in archive 1", f"restored {dest}"], r.stdout
    assert dest.read_bytes() == data
    st = dest.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 567, 0o640)
    assert not rig.flags(new) & HS.RELEASED and rig.flags(new) & HS.ARCHIVED
    # the catalog follows: the copy is the new FID's, the object is the old one's
    (entry,) = rig.client.copies_of(new, FSNAME)
    assert entry.copy.key and (rig.archive / entry.copy.key).read_bytes() == data
    assert rig.client.copies_of(old, FSNAME) == []
    # again: PATH exists, and the old FID has no copy left: refused, nothing changes
    r = hsmctl("--to", str(dest), str(old))
    assert r.returncode == 1 and f"{dest} exists" in r.stderr
    other = rig.fs.root / "proj" / "c"
    r = hsmctl("--to", str(other), str(old))
    assert r.returncode == 1 and f"the catalog has no copy of {old}" in r.stderr and not other.exists()
    # a FID that still names a file is refused before anything is created
    r = hsmctl("--to", str(other), str(new))
    assert r.returncode == 1 and f"{new} still names" in r.stderr and not other.exists()


def test_a_striped_archive_on_lustre_begins_twice_and_ends_once_at_the_mdt(rig: Rig) -> None:
    """Striping (docs/striping.md) through the MDT: the anchor begins the
    MDT's item and gives it back without ending it, the parts read the file
    through ``.lustre/fid`` with no item of their own, and the seal begins
    the same cookie again and ends it: the MDT sees one request, two
    begins and one end, and the file ARCHIVED with the parts' object."""
    rig.client.set_policy("striping: {above: 2M, part_size: 1M}\n")
    rig.start_bridge("--mdt-max-requests", "1000")
    rig.start_agentd()
    path = rig.fs.root / "big"
    data = os.urandom(4 * 1024 * 1024 + 4321)
    path.write_bytes(data)
    fid = rig.api.path2fid(path)
    rig.request_in_batches(HUA.ARCHIVE, [fid])
    until(lambda: rig.flags(fid) & HS.ARCHIVED, 60, "the file ARCHIVED at the MDT")
    (act,) = [a for a in rig.client.list_actions(include_terminal=True)]
    act = rig.client.wait([act.action_id], deadline=30)[act.action_id]  # the seal's Done may still be on its way
    assert state_name(act.state) == "SUCCEEDED" and act.attempt == 2, act  # the anchor, then the seal
    (rec,) = [r for r in rig.mdt.records() if r["action"] == "ARCHIVE"]
    st = rig.mdt.cookie(rec["cookie"])
    assert len(st["begins"]) == 2 and [e["errval"] for e in st["ends"]] == [0], st
    assert object_path(rig.archive, fid).read_bytes() == data
    log = rig.agentd_log.read_text()
    assert "striped over several agents" in log and log.count("copied to") == 5  # 5 parts of 1 MiB at most
    (entry,) = rig.client.copies_of(fid)
    assert entry.copy.checksum.startswith(f"sha256/{1 << 20}:")
