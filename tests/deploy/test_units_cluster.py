"""A 3-coordinator + 2-agent cluster started from the ``ExecStart`` lines of
the systemd units the Ansible roles render (as plain processes: no systemd
runs here), driven through archive, release and restore with hsmctl on a
simfs tree, every byte verified. Every connection is mutual TLS with the
certificates the roles made (hsmctl uses the admin certificate the
coordinator role issued on the controller); plain text is refused.

The units' ``Type=notify`` contract is checked on the way: each replica gets
a ``NOTIFY_SOCKET`` like systemd gives it and must send ``READY=1`` (API
bound, a leader for every shard), ``WATCHDOG=1`` while ``WATCHDOG_USEC`` is
set, and ``STOPPING=1`` then exit 0 on SIGTERM within the unit's
``TimeoutStopSec``."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from hsm.hsmflags import HS
from hsm.simfs import SimFS
from tests.deploy import deploylib as dl
from tests.deploy.conftest import RenderedCluster, ports_taken, render_cluster
from tests.notifysock import NotifySocket

pytestmark = pytest.mark.slow  # real processes, seconds per test

FILES = 36



def wait_for(what: str, cond: Callable[[], bool], timeout: float, services: list[Service]) -> None:
    """Poll *cond* until *timeout*; give up at once when a service died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        dead = [s.name for s in services if s.proc.poll() is not None]
        if dead:
            raise AssertionError(f"{', '.join(dead)} exited while waiting for {what}\n{_logs(services)}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{_logs(services)}")


class Service:
    """One unit's ExecStart run as a plain process, output to a log file."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = log
        self._out: IO[bytes] = open(log, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._out, stderr=subprocess.STDOUT, env=env,
                                     stdin=subprocess.DEVNULL)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # hung: its stacks into its log (hsm.stall) for the failure's message, then kill it
                self.proc.send_signal(signal.SIGUSR1)
                time.sleep(2)
                self.proc.kill()
                self.proc.wait()
                return None
        self._out.close()
        return self.proc.returncode


@pytest.fixture
def services() -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


def _logs(services: list[Service]) -> str:
    return "\n".join(f"--- {s.name} (exit {s.proc.poll()}) ---\n{s.text()[-3000:]}" for s in services)


def _hsmctl(cl: RenderedCluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """hsmctl with the admin certificate the role issued on the controller."""
    addresses = ",".join(h.api for h in cl.coordinators)
    env = {**os.environ, **cl.admin_tls_env(), "HSM_COORDINATORS": addresses}
    return subprocess.run([str(dl.BIN / "hsmctl"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_cluster_from_rendered_units_passes_the_workload(rendered_cluster: RenderedCluster,
                                                         services: list[Service], tmp_path: Path) -> None:
    cl = rendered_cluster
    # the session's rendering picked its ports a while ago: if something
    # took one since, render again on ports free now rather than fail with
    # "address in use" (the rendering is the same but for the ports)
    if taken := ports_taken(cl):
        cl = render_cluster(tmp_path / "rendered-again")
        if again := ports_taken(cl):
            pytest.fail(f"loopback ports {taken} of the rendered cluster were taken before it started, and "
                        f"ports {again} of a second rendering too: something is using ports fast")
    fs = SimFS.create(cl.fs_root, "deployfs")
    cl.archive_root.mkdir(exist_ok=True)
    logs = tmp_path / "logs"
    logs.mkdir()

    # coordinators, from hsm-coordinator.service's ExecStart
    notifies: dict[str, NotifySocket] = {}
    coordinators: list[Service] = []
    for h in cl.coordinators:
        argv = dl.exec_start(h.unit.read_text())
        notify = notifies[h.name] = NotifySocket(tmp_path / f"notify-{h.name}")  # read as systemd reads it
        env = dict(os.environ, NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="2000000")
        svc = Service(h.name, argv, logs / f"{h.name}.log", env)
        services.append(svc)
        coordinators.append(svc)
    try:
        for h, svc in zip(cl.coordinators, coordinators, strict=True):
            wait_for(f"{h.name} to print that it serves on {h.api}",
                     lambda svc=svc, h=h: f"replica {h.name} serving on" in svc.text(), 60, services)
        for h in cl.coordinators:
            wait_for(f"READY=1 from {h.name} (a leader for every shard)",
                     lambda h=h: notifies[h.name].seen("READY=1"), 60, services)
        for h in cl.coordinators:
            wait_for(f"WATCHDOG=1 from {h.name} (WATCHDOG_USEC=2000000)",
                     lambda h=h: notifies[h.name].seen("WATCHDOG=1"), 5, services)

        # two agents, from agentd.service's ExecStart
        for m in cl.movers:
            argv = dl.exec_start(m.unit.read_text())
            services.append(Service(m.name, argv, logs / f"{m.name}.log", dict(os.environ)))

        def agents_connected() -> bool:
            r = _hsmctl(cl, "agents", "--json", timeout=30)
            return r.returncode == 0 and {a["agent_id"] for a in json.loads(r.stdout)} == {m.name for m in cl.movers}

        wait_for("both agents to register", agents_connected, 30, services)
        # mutual TLS from the role's certificates: plain text is refused
        plain = subprocess.run([str(dl.BIN / "hsmctl"), "--coordinators", cl.coordinators[0].api, "--timeout", "5",
                                "status"], env={k: v for k, v in os.environ.items() if not k.startswith("HSM_")},
                               capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert plain.returncode != 0, plain.stdout

        # the workload: archive, release, restore, every byte back
        rng = random.Random(5)
        data = fs.root / "data"
        digests: dict[Path, str] = {}
        for i in range(FILES):
            f = data / f"dir{i % 4}" / f"file{i:03d}.bin"
            f.parent.mkdir(parents=True, exist_ok=True)
            payload = rng.randbytes(rng.choice([0, 1, 4096, 70_000, 300_000]))
            f.write_bytes(payload)
            digests[f] = hashlib.sha256(payload).hexdigest()
        files = [str(f) for f in sorted(digests)]

        r = _hsmctl(cl, "archive", "--wait", "-r", str(data))
        assert r.returncode == 0, r.stdout + r.stderr + _logs(services)
        for f in digests:
            assert fs.hsm_state(f).flags & HS.ARCHIVED, f
        r = _hsmctl(cl, "release", *files)
        assert r.returncode == 0, r.stdout + r.stderr
        assert all(fs.hsm_state(f).flags & HS.RELEASED for f in digests)
        r = _hsmctl(cl, "restore", "--wait", *files)
        assert r.returncode == 0, r.stdout + r.stderr + _logs(services)
        for f, digest in digests.items():
            assert not fs.hsm_state(f).flags & HS.RELEASED, f
            assert hashlib.sha256(f.read_bytes()).hexdigest() == digest, f"{f}: bytes differ after restore"

        r = _hsmctl(cl, "actions", "--all", "--json")
        assert r.returncode == 0, r.stdout + r.stderr + _logs(services)
        actions = json.loads(r.stdout)
        assert {(a["kind"], a["state"]) for a in actions} == {("ARCHIVE", "SUCCEEDED"), ("RESTORE", "SUCCEEDED")}
        assert len(actions) == 2 * len(digests), "one archive and one restore per file"
        status = json.loads(_hsmctl(cl, "status", "--json").stdout)
        assert sorted(r["id"] for r in status["replicas"]) == [h.name for h in cl.coordinators]
        assert all(s["leader"] for s in status["shards"]), status["shards"]
    finally:
        # agents first (drain), then the replicas, each within its unit's TimeoutStopSec
        for svc in reversed(services):
            unit = next((h.unit for h in [*cl.coordinators, *cl.movers] if h.name == svc.name), None)
            stop_timeout = float(dl.unit_values(unit.read_text(), "Service", "TimeoutStopSec")[0]) if unit else 30
            svc.stop(stop_timeout)
        for n in notifies.values():
            n.close()
    for svc in services:
        assert svc.proc.returncode == 0, f"{svc.name} exited {svc.proc.returncode} on SIGTERM\n{svc.text()[-12000:]}"
    for name, n in notifies.items():
        assert "STOPPING=1" in n.messages, f"{name} sent no STOPPING=1: {n.messages}"
