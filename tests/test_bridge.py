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
from types import SimpleNamespace
from typing import Any

import pytest

from coordinator.config import ADMIN_CERT
from hsm.client import CoordinatorClient, state_name
from hsm.fid import Fid
from hsm.hsmflags import HS, HUA
from hsm.lustre import hal
from hsm.lustre.api import LustreApi
from hsm.simfs import SimFS
from tests.cluster import Pki, ProcCluster, tls_replica
from tests.lustre_standin.harness import MdtProcess, library_or_skip, until

pytestmark = pytest.mark.slow  # real processes

FSNAME = "lfs0"


class Rig:
    """*pki*: the cluster's certificates: the test's client presents the
    admin's, each hsm-bridge process a bridge's (role bridge)."""

    def __init__(self, tmp: Path, lib: Path, coordinator: Any, pki: Pki, **mdt_params: Any) -> None:
        self.tmp = tmp
        self.pki = pki
        self.lib = lib
        self.api = LustreApi(lib)
        self.fs = SimFS.create(tmp / "mnt", FSNAME)
        self.mdt = MdtProcess(self.fs.root, tmp / "mdt.log", **{"max_requests": 100, **mdt_params})
        self.address = coordinator.address
        self.client = CoordinatorClient(self.address, timeout=10, tls=pki.files(ADMIN_CERT))
        self.bridge: subprocess.Popen[bytes] | None = None
        self.log = tmp / "bridge.log"

    def lctl_command(self) -> str:
        """What a site gives --active-requests-command: ``lctl get_param``
        of the MDT's active requests (here the stand-in's lctl)."""
        return (f"{sys.executable} -m tests.lustre_standin.lctl --root {self.fs.root} "
                f"get_param mdt.*.hsm.active_requests")

    def spawn_bridge(self, *extra: str, log: Path | None = None, journal: Path | None = None,
                     holder: str = "bridge-1") -> subprocess.Popen[bytes]:
        """An hsm-bridge process, with a fixed lease holder name unless
        *extra* names one: restarted after a kill, it takes its own lease
        back at once."""
        self.pki.issue("mdt-bridge", "bridge")
        env = self.pki.env("mdt-bridge", dict(os.environ, HSM_LIBLUSTREAPI=str(self.lib)))
        env.pop("HSM_CLUSTER", None)
        named = () if "--holder" in extra else ("--holder", holder)
        with open(log or self.log, "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "bridge.cli", "--mount", str(self.fs.root), "--fsname", FSNAME,
                 "--coordinators", self.address, "--journal", str(journal or self.tmp / "journal"),
                 "--log-level", "debug", *named, *extra], stdout=out, stderr=out, env=env)

    def registered(self) -> list[int]:
        """The pids of the copytools registered with the MDT."""
        return [a["pid"] for a in self.mdt.stats()["agents"]]

    def start_bridge(self, *extra: str) -> None:
        self.bridge = self.spawn_bridge(*extra)
        until(lambda: self.bridge is not None and (self.bridge.poll() is not None or self.registered()),
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
    r = Rig(tmp_path, lib, *tls_replica(coordinator_factory, tmp_path / "pki", shards=4))
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


def test_a_bridge_that_cannot_reach_the_coordinators_leaves_the_items_waiting_at_the_mdt(rig: Rig) -> None:
    """Without the coordinators' lease a bridge does not register: the MDT
    keeps the items WAITING (no active_request_timeout runs on them) and
    sends them to the bridge that can forward them."""
    address = rig.address
    rig.address = "127.0.0.1:1"  # nothing listens there
    cut_off = rig.spawn_bridge()
    try:
        fids = rig.files(20)
        rig.request(HUA.ARCHIVE, fids)
        until(lambda: "did not answer" in rig.log.read_text(), 20, "the bridge failing to reach the coordinators")
        assert cut_off.poll() is None, "it waits, it does not exit"
        assert rig.registered() == [], "not registered with the MDT"
        assert {r["status"] for r in rig.mdt.records()} == {"WAITING"}
    finally:
        cut_off.kill()
        cut_off.wait()
    rig.address = address
    rig.start_bridge()
    until(lambda: len(rig.actions()) == 20, 20, "the 20 actions")


def test_items_read_when_the_coordinators_lose_quorum_are_sent_when_they_return(tmp_path: Path) -> None:
    """The coordinators lose quorum while the bridge is active: it keeps
    what it read in its journal, cannot renew its lease, unregisters and
    exits 1 (no bridge can forward anything meanwhile); restarted, it
    stands by until they are back, then sends the journaled items."""
    lib = library_or_skip(tmp_path / "lib")
    cluster = ProcCluster(tmp_path / "cluster", shards=2)
    r: Rig | None = None
    try:
        cluster.start_all()
        r = Rig(tmp_path, lib, SimpleNamespace(address=cluster.addresses), cluster.pki)
        r.start_bridge("--lease-ttl", "4")
        fids = r.files(20)
        r.request(HUA.ARCHIVE, fids[:5])
        until(lambda: len(r.actions()) == 5, 20, "the first 5 actions")
        cluster.kill("r2")
        cluster.kill("r3")
        r.request(HUA.ARCHIVE, fids[5:])
        until(lambda: len([x for x in r.mdt.records() if x["status"] == "STARTED"]) == 20, 20,
              "the MDT sent the other 15 to the bridge")
        assert r.bridge is not None
        assert r.bridge.wait(30) == 1, "the bridge stops when it cannot renew its lease"
        log = r.log.read_text()
        assert "could not be renewed" in log and "unregistered from the MDT" in log
        assert r.registered() == []
        cluster.start("r2")
        cluster.start("r3")
        cluster.wait_ready()
        r.start_bridge("--lease-ttl", "4")
        until(lambda: len(r.actions()) == 20, 30, "all 20 actions, 15 of them from the journal")
        assert len({(a.fid.seq, a.fid.oid) for a in r.actions()}) == 20, "one action per file"
        assert "sent again" in r.log.read_text()
    finally:
        if r is not None:
            r.stop()
        cluster.stop()


def test_a_second_bridge_stands_by_and_takes_over(rig: Rig) -> None:
    """Two bridges for one file system: one registers with the MDT, the
    other stands by. SIGTERM of the active one hands over at once (it gives
    its lease back); kill -9 of the next one hands over when its lease
    lapses, and the items the MDT had sent to the dead one are recovered
    from the MDT's active requests. One action per MDT item throughout."""
    recover = ("--active-requests-command", rig.lctl_command(), "--lease-ttl", "3")
    a = rig.spawn_bridge(*recover, holder="node-a", log=rig.tmp / "a.log", journal=rig.tmp / "a.journal")
    b: subprocess.Popen[bytes] | None = None
    try:
        until(lambda: rig.registered() == [a.pid], 20, "bridge a active")
        b = rig.spawn_bridge(*recover, holder="node-b", log=rig.tmp / "b.log", journal=rig.tmp / "b.journal")
        until(lambda: "standing by as node-b: bridge:lfs0 held by node-a" in (rig.tmp / "b.log").read_text(), 20,
              "bridge b standing by")
        assert rig.registered() == [a.pid], "one active bridge"
        fids = rig.files(30)
        rig.request(HUA.ARCHIVE, fids[:10])
        until(lambda: len(rig.actions()) == 10, 20, "10 actions through bridge a")

        a.terminate()
        assert a.wait(20) == 0
        until(lambda: rig.registered() == [b.pid], 5, "bridge b active at once: a gave its lease back")
        rig.request(HUA.ARCHIVE, fids[10:20])
        until(lambda: len(rig.actions()) == 20, 20, "20 actions")

        a = rig.spawn_bridge(*recover, holder="node-a", log=rig.tmp / "a.log", journal=rig.tmp / "a.journal")
        until(lambda: "standing by as node-a" in (rig.tmp / "a.log").read_text().split("stopped;")[-1], 20,
              "bridge a back, standing by")
        b.send_signal(signal.SIGSTOP)  # the MDT's next list stays in b's pipe...
        rig.request(HUA.ARCHIVE, fids[20:])
        until(lambda: len([x for x in rig.mdt.records() if x["status"] == "STARTED"]) == 30, 20,
              "the MDT sent the last 10 to bridge b")
        b.kill()  # ... and b dies without reading it
        b.wait()
        until(lambda: rig.registered() == [a.pid], 20, "bridge a active once b's lease lapsed")
        until(lambda: len(rig.actions()) == 30, 20, "the last 10, recovered from the MDT's active requests")
        acts = rig.actions()
        assert len({(x.fid.seq, x.fid.oid) for x in acts}) == 30, "one action per file"
        assert all(len(x.requesters) == 1 for x in acts), "each MDT item made or joined one action once"
        # the 10 b forwarded and the 10 it never read: a knows neither, and
        # the coordinator's keys make the first 10 harmless
        assert "20 item(s) recovered from its active requests" in (rig.tmp / "a.log").read_text()
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def test_the_mdt_max_requests_stall_is_reported(tmp_path: Path, coordinator_factory: Any) -> None:
    lib = library_or_skip(tmp_path / "lib")
    r = Rig(tmp_path, lib, *tls_replica(coordinator_factory, tmp_path / "pki"), max_requests=3)
    try:
        r.start_bridge("--mdt-max-requests", "3", "--mdt-stall-after", "1")
        r.request(HUA.ARCHIVE, r.files(5))
        until(lambda: "raise mdt.*.hsm.max_requests" in r.log.read_text(), 20, "the stall reported")
        assert len(r.actions()) == 3, "the MDT holds back the other two"
    finally:
        r.stop()
