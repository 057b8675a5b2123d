"""hsm-bridge end to end on the stand-in: requests made like ``lfs
hsm_archive`` on a simfs mount -> the simulated MDT -> hsm-bridge (a real
process, the stand-in liblustreapi) -> a real coordinator. No mover runs
here (agentd's lustre backend comes next): the actions wait, and the
bridge's own duties are checked: one action per MDT item keyed by its
cookie, cancels both ways, items ended at the MDT when no agent will end
them, the journal replayed after kill -9, the MDT's stall reported."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hsm.client import CoordinatorClient, state_name
from hsm.fid import Fid
from hsm.hsmflags import HS, HUA
from hsm.lustre import hal
from hsm.lustre.api import LustreApi
from hsm.simfs import SimFS
from tests.lustre_standin.harness import MdtProcess, library_or_skip, until

pytestmark = pytest.mark.slow  # real processes

FSNAME = "lfs0"


class Rig:
    def __init__(self, tmp: Path, lib: Path, coordinator: Any, **mdt_params: Any) -> None:
        self.tmp = tmp
        self.lib = lib
        self.api = LustreApi(lib)
        self.fs = SimFS.create(tmp / "mnt", FSNAME)
        self.mdt = MdtProcess(self.fs.root, tmp / "mdt.log", **{"max_requests": 100, **mdt_params})
        self.address = coordinator.address
        self.client = CoordinatorClient(self.address, timeout=10)
        self.bridge: subprocess.Popen[bytes] | None = None
        self.log = tmp / "bridge.log"

    def start_bridge(self, *extra: str) -> None:
        env = dict(os.environ, HSM_LIBLUSTREAPI=str(self.lib))
        env.pop("HSM_CLUSTER", None)
        with open(self.log, "ab") as log:
            self.bridge = subprocess.Popen(
                [sys.executable, "-m", "bridge.cli", "--mount", str(self.fs.root), "--fsname", FSNAME,
                 "--coordinators", self.address, "--journal", str(self.tmp / "journal"),
                 "--log-level", "debug", *extra], stdout=log, stderr=log, env=env)
        until(lambda: self.bridge is not None and (self.bridge.poll() is not None or self.mdt.stats()["agents"]),
              20, "the bridge to register with the MDT")
        assert self.bridge.poll() is None, self.log.read_text()

    def files(self, n: int, start: int = 0) -> list[Fid]:
        fids = []
        for i in range(start, start + n):
            p = self.fs.root / f"f{i:03d}"
            p.write_bytes(os.urandom(100 + i))
            fids.append(self.api.path2fid(p))
        return fids

    def request(self, action: int, fids: list[Fid]) -> None:
        """``lfs hsm_archive`` & co."""
        self.api.request(self.fs.root, hal.UserRequest(action, 0, 0, tuple(hal.UserItem(f) for f in fids)))

    def actions(self) -> list[Any]:
        return list(self.client.list_actions(include_terminal=True))

    def stop(self) -> None:
        if self.bridge is not None and self.bridge.poll() is None:
            self.bridge.terminate()
            try:
                self.bridge.wait(15)
            except subprocess.TimeoutExpired:
                self.bridge.kill()
                self.bridge.wait()
        self.client.close()
        self.mdt.stop()


@pytest.fixture
def rig(tmp_path: Path, coordinator_factory: Any) -> Iterator[Rig]:
    lib = library_or_skip(tmp_path / "lib")
    r = Rig(tmp_path, lib, coordinator_factory(shards=4))
    try:
        yield r
    finally:
        r.stop()


def test_each_mdt_item_becomes_one_action_keyed_by_its_cookie(rig: Rig) -> None:
    rig.start_bridge()
    fids = rig.files(20)
    rig.request(HUA.ARCHIVE, fids)
    until(lambda: len(rig.actions()) == 20, 20, "20 actions at the coordinator")
    cookies = {r["cookie"]: r["fid"] for r in rig.mdt.records()}
    assert len(cookies) == 20
    for a in rig.actions():
        (req,) = a.requesters
        assert req.initiator == f"lustre:{FSNAME}" and cookies[req.cookie] == str(Fid(a.fid.seq, a.fid.oid, a.fid.ver))
        assert state_name(a.state) == "WAITING"
    assert {r["status"] for r in rig.mdt.records()} == {"STARTED"}, "the MDT sent them all to the bridge"


def test_cancels_both_ways_and_items_no_agent_will_end_are_ended_at_the_mdt(rig: Rig) -> None:
    rig.start_bridge()
    fids = rig.files(6)
    rig.request(HUA.ARCHIVE, fids)
    until(lambda: len(rig.actions()) == 6, 20, "6 actions")
    # lfs hsm_cancel of two files: the MDT sends HSMA_CANCEL items with their cookies
    rig.request(HUA.CANCEL, fids[:2])
    until(lambda: sum(state_name(a.state) == "CANCELED" for a in rig.actions()) == 2, 20,
          "the two actions canceled at the coordinator")
    # the admin cancels the rest at the coordinator: the MDT must not keep them STARTED
    rig.client.cancel(all=True, reason="test")
    cookies = [r["cookie"] for r in rig.mdt.records() if r["action"] == "ARCHIVE"]
    until(lambda: all(len(rig.mdt.cookie(c)["ends"]) >= 1 for c in cookies), 20,
          "every archive item ended at the MDT")
    assert all(len(rig.mdt.cookie(c)["ends"]) == 1 for c in cookies), "exactly one end each"
    assert all(e["errval"] == errno.ECANCELED for c in cookies for e in rig.mdt.cookie(c)["ends"])
    # no item left STARTED to block max_requests (an end with ECANCELED leaves
    # the record SUCCEED, as hsm_cdt_request_completed does), nothing archived
    assert not [r for r in rig.mdt.records() if r["status"] == "STARTED"]
    assert not any(rig.fs.hsm_state(rig.fs.path_of(f)).flags & HS.ARCHIVED for f in fids)


def test_kill_9_of_the_bridge_loses_nothing_and_makes_nothing_twice(rig: Rig) -> None:
    rig.start_bridge()
    fids = rig.files(40)
    rig.request(HUA.ARCHIVE, fids[:20])
    until(lambda: len(rig.actions()) == 20, 20, "the first 20 actions")
    assert rig.bridge is not None
    rig.bridge.send_signal(signal.SIGKILL)
    rig.bridge.wait()
    rig.request(HUA.ARCHIVE, fids[20:])  # waits at the MDT for a copytool
    rig.start_bridge()
    until(lambda: len(rig.actions()) == 40, 20, "all 40 actions")
    acts = rig.actions()
    assert len({(a.fid.seq, a.fid.oid) for a in acts}) == 40, "one action per file, none twice"
    assert "sent again" in rig.log.read_text(), "the journal was replayed"


def test_items_read_while_no_coordinator_answered_are_sent_after_a_kill_9(rig: Rig) -> None:
    """The MDT never sends an item twice: the bridge's journal is the only
    place the items it read survive a crash before they reached a
    coordinator."""
    address = rig.address
    rig.address = "127.0.0.1:1"  # nothing listens there
    rig.start_bridge()
    fids = rig.files(20)
    rig.request(HUA.ARCHIVE, fids)
    until(lambda: {r["status"] for r in rig.mdt.records()} == {"STARTED"} and len(rig.mdt.records()) == 20,
          20, "the MDT sent all 20 to the bridge")
    until(lambda: "again in" in rig.log.read_text(), 20, "the bridge retrying the unreachable coordinator")
    assert rig.bridge is not None
    rig.bridge.send_signal(signal.SIGKILL)
    rig.bridge.wait()
    assert rig.actions() == []
    rig.address = address
    rig.start_bridge()
    until(lambda: len(rig.actions()) == 20, 20, "the 20 actions, from the journal")
    assert "sent again 1 action list(s) from the journal" in rig.log.read_text()


def test_the_mdt_max_requests_stall_is_reported(tmp_path: Path, coordinator_factory: Any) -> None:
    lib = library_or_skip(tmp_path / "lib")
    r = Rig(tmp_path, lib, coordinator_factory(), max_requests=3)
    try:
        r.start_bridge("--mdt-max-requests", "3", "--mdt-stall-after", "1")
        r.request(HUA.ARCHIVE, r.files(5))
        until(lambda: "raise mdt.*.hsm.max_requests" in r.log.read_text(), 20, "the stall reported")
        assert len(r.actions()) == 3, "the MDT holds back the other two"
    finally:
        r.stop()
