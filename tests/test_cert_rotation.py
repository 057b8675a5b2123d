"""Certificate rotation on a live cluster (docs/operations.md, "Rotating
certificates"): 3 replica processes with mutual TLS, two agentd processes
and a steady trickle of archive requests. Each replica gets a new
certificate (same CA, new key) and is restarted, one at a time; then an
agent's and the client's. Nothing stops: every request submitted meanwhile
ends SUCCEEDED, once, and afterwards each replica presents its new
certificate. The CA itself is rotated the same way, through a CA bundle
that holds the old and the new CA while the certificates change."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from coordinator import certs
from coordinator.config import ADMIN_CERT
from hsm.client import CoordinatorClient, CoordinatorError, submit_item
from hsm.fid import Fid
from hsm.simfs import SimFS
from hsm.tls import TlsFiles
from hsm.v1 import coordinator_pb2 as C
from hsm.v1 import coordinator_pb2_grpc
from hsm.v1 import types_pb2 as T
from tests.cluster import ENV, Pki, ProcCluster, no_concurrent_runs, until

pytestmark = pytest.mark.slow  # real processes, restarts

AGENTS = ("m1", "m2")


class Trickle:
    """Small archive batches from a client thread, each retried with the
    same idempotency keys until acknowledged. ``use(files)`` makes the next
    batches go through a new client presenting *files* (a rotated client
    certificate)."""

    def __init__(self, cluster: ProcCluster, tls: TlsFiles) -> None:
        self.cluster = cluster
        self.client = CoordinatorClient(cluster.addresses, timeout=5, initiator="trickle", tls=tls)
        self.acked: dict[int, str] = {}
        self.batches = 0
        self.errors: list[str] = []
        self.n = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Trickle:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
        self.client.close()

    def use(self, tls: TlsFiles) -> None:
        new = CoordinatorClient(self.cluster.addresses, timeout=5, initiator="trickle", tls=tls)
        with self._lock:
            old, self.client = self.client, new
        old.close()

    def more(self, n: int, timeout: float, what: str) -> None:
        """Until *n* more batches are acknowledged: the cluster serves."""
        target = self.batches + n
        until(lambda: self.batches >= target, timeout, lambda: f"{n} more batches {what} ({self.errors[-3:]})")

    def _run(self) -> None:
        while not self._stop.is_set():
            items = []
            for _ in range(5):
                self.n += 1
                items.append(submit_item("sys", Fid(0x200000400, self.n), "archive",
                                         idempotency_key=f"trickle-{self.n}"))
            results = None
            while results is None and not self._stop.is_set():
                try:
                    with self._lock:
                        client = self.client
                    results = client.submit(items)
                except CoordinatorError as exc:  # retried with the same keys
                    self.errors.append(str(exc))
                    time.sleep(0.1)
            if results is None:
                return
            for it, r in zip(items, results, strict=True):
                assert r.outcome == 1, r  # CREATED (a retry answers the first result)
                self.acked[r.action_id] = it.idempotency_key
            self.batches += 1
            time.sleep(0.05)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcCluster]:
    c = ProcCluster(tmp_path, agent_grace=5.0)
    try:
        c.start_all()
        fs = SimFS.create(tmp_path / "fs", "sys")
        for a in AGENTS:
            c.start_agent(a, "--fs-root", str(fs.root), "--mover", "null", "--null-delay", "0.02",
                          "--slots", "archive=8,restore=0,remove=0")
        until(lambda: all(connected(c, a) for a in AGENTS), 20, "both agents connected to every replica")
        yield c
    finally:
        c.stop()


def connected(c: ProcCluster, agent: str) -> bool:
    return all(any(a.agent_id == agent and a.replica for a in c.status(s.id).agents) for s in c.live())


def fingerprint(pem: Path) -> str:
    return x509.load_pem_x509_certificate(pem.read_bytes()).fingerprint(hashes.SHA256()).hex()


def presented(address: str, client: TlsFiles) -> str:
    """The SHA-256 fingerprint of the certificate the server at *address*
    presents in a TLS handshake (as *client*, verifying it against the CA)."""
    host, port = address.rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(client.ca))
    ctx.load_cert_chain(str(client.cert), str(client.key))
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def reissue(ca_dir: Path, into: Pki, name: str, role: str, hosts: tuple[str, ...] = ()) -> None:
    """The documented commands: issue a new certificate and key (signed by
    the CA in *ca_dir*) into a staging directory, then move both over the
    files the party's configuration names."""
    staging = into.dir / "staging"
    cmd = [sys.executable, "-m", "coordinator.cli", "certs", "issue", "--dir", str(ca_dir), "--name", name,
           "--role", role, "--out", str(staging)]
    for h in hosts:
        cmd += ["--host", h]
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 0, r.stderr
    os.replace(staging / f"{name}.key", into.dir / f"{name}.key")
    os.replace(staging / f"{name}.pem", into.dir / f"{name}.pem")


def restart_replica(c: ProcCluster, rid: str) -> None:
    """SIGTERM (it hands its leaderships over), start, and wait until it is
    serving and has caught up with what the others applied meanwhile."""
    c.kill(rid, signal.SIGTERM)
    c.start(rid)
    c.wait_ready()
    other = next(s.id for s in c.live() if s.id != rid)
    marks = [s.applied_index for s in c.status(other).shards]
    until(lambda: all(s.applied_index >= m for s, m in zip(c.status(rid).shards, marks, strict=True)), 30,
          f"{rid} to catch up")


def restart_agent(c: ProcCluster, agent: str) -> None:
    """SIGTERM (it drains its running actions), start again: it reads its
    (new) certificate at start."""
    c.kill_agent(agent, signal.SIGTERM)
    assert c.agents[agent].wait(30) == 0
    c.start_agent(agent, *c.agent_args[agent])
    until(lambda: connected(c, agent), 20, f"{agent} connected to every replica again")


def rolling_restart(c: ProcCluster, trickle: Trickle, ca_dir: Path | None = None) -> None:
    """Every replica in turn (with a new certificate from *ca_dir* when
    given), the trickle served after each restart."""
    pki = c.pki
    for s in list(c.specs):
        if ca_dir is not None:
            reissue(ca_dir, pki, s.id, "replica", hosts=(s.api.rsplit(":", 1)[0],))
        restart_replica(c, s.id)
        trickle.more(5, 30, f"after {s.id} restarted")
    for a in AGENTS:
        if ca_dir is not None:
            reissue(ca_dir, pki, a, "agent")
        restart_agent(c, a)
    trickle.more(5, 30, "after the agents restarted")


def check_all_served(c: ProcCluster, trickle: Trickle) -> None:
    """Every acknowledged request ended SUCCEEDED, each ran once, the
    replicas agree."""
    assert trickle.acked, "nothing was submitted"
    with CoordinatorClient(c.addresses, timeout=20, tls=c.client_tls) as client:
        final = client.wait(sorted(trickle.acked), deadline=120)
    lost = set(trickle.acked) - set(final)
    assert not lost, f"{len(lost)} acknowledged actions lost"
    assert {a.state for a in final.values()} == {T.SUCCEEDED}
    runs = c.agent_runs()
    per_action: dict[int, int] = {}
    for _agent, action_id, _attempt, _s, _e in runs:
        per_action[action_id] = per_action.get(action_id, 0) + 1
    twice = {i: n for i, n in per_action.items() if i in trickle.acked and n != 1}
    assert not twice, f"actions run more than once: {list(twice.items())[:5]}"
    assert set(trickle.acked) <= set(per_action)
    assert not no_concurrent_runs(runs)
    c.check_converged(timeout=60)


def test_rotating_every_certificate_keeps_the_cluster_serving(cluster: ProcCluster) -> None:
    pki = cluster.pki
    old = {s.id: fingerprint(pki.files(s.id).cert) for s in cluster.specs}
    assert {s.id: presented(s.api, pki.files(ADMIN_CERT)) for s in cluster.specs} == old
    with Trickle(cluster, pki.files(ADMIN_CERT)) as trickle:
        trickle.more(10, 30, "before the rotation")
        # replicas, one at a time: new key and certificate, restart, serving again
        for s in list(cluster.specs):
            reissue(pki.dir, pki, s.id, "replica", hosts=("127.0.0.1",))
            assert fingerprint(pki.files(s.id).cert) != old[s.id]
            restart_replica(cluster, s.id)
            assert presented(s.api, pki.files(ADMIN_CERT)) == fingerprint(pki.files(s.id).cert)
            trickle.more(5, 30, f"after {s.id} restarted with its new certificate")
        # an agent: new certificate, restart (it drains first)
        restart_at = (cluster.logs / "m1.log").stat().st_size
        reissue(pki.dir, pki, "m1", "agent")
        restart_agent(cluster, "m1")
        # the client: new certificate; the next requests present it
        reissue(pki.dir, pki, ADMIN_CERT, "admin")
        trickle.use(pki.files(ADMIN_CERT))
        trickle.more(20, 60, "with the new client certificate")
        until(lambda: " started" in (cluster.logs / "m1.log").read_bytes()[restart_at:].decode(errors="replace"),
              30, "m1 to run actions with its new certificate")
    # no replica presents an old certificate any more
    for s in cluster.specs:
        now = presented(s.api, pki.files(ADMIN_CERT))
        assert now == fingerprint(pki.files(s.id).cert) and now != old[s.id], s.id
    # hsmctl with the new client certificate (HSM_TLS_*) works too
    r = subprocess.run([sys.executable, "-m", "hsmctl.cli", "--coordinators", cluster.addresses, "status"],
                       capture_output=True, text=True, env=cluster.env, timeout=60)
    assert r.returncode == 0, r.stderr
    check_all_served(cluster, trickle)


def test_rotating_the_ca_through_a_bundle_keeps_the_cluster_serving(cluster: ProcCluster, tmp_path: Path) -> None:
    """1. every party trusts the old and the new CA (a bundle), restarted in
    turn; 2. every party gets a certificate of the new CA, in turn; 3. the
    old CA is dropped from the bundle, in turn. Then a certificate of the
    old CA gets nowhere."""
    pki = cluster.pki
    old_ca = pki.ca.read_bytes()
    old_admin = Pki(tmp_path / "old-admin")
    old_admin.dir.mkdir()
    for suffix in (".pem", ".key"):
        (old_admin.dir / f"{ADMIN_CERT}{suffix}").write_bytes((pki.dir / f"{ADMIN_CERT}{suffix}").read_bytes())
    new_ca_dir = tmp_path / "ca2"
    certs.init_ca(new_ca_dir, name="hsm-coordinator CA 2")
    new_ca = (new_ca_dir / "ca.pem").read_bytes()
    # it trusts both CAs: a refusal below is the replicas', not its own
    (old_admin.dir / "ca.pem").write_bytes(old_ca + new_ca)
    with Trickle(cluster, pki.files(ADMIN_CERT)) as trickle:
        trickle.more(10, 30, "before the rotation")
        # 1. trust both
        pki.ca.write_bytes(old_ca + new_ca)
        rolling_restart(cluster, trickle)
        trickle.use(pki.files(ADMIN_CERT))
        # 2. certificates of the new CA
        rolling_restart(cluster, trickle, ca_dir=new_ca_dir)
        reissue(new_ca_dir, pki, ADMIN_CERT, "admin")
        trickle.use(pki.files(ADMIN_CERT))
        trickle.more(10, 30, "with the client's new-CA certificate")
        # 3. trust only the new CA
        pki.ca.write_bytes(new_ca)
        rolling_restart(cluster, trickle)
        trickle.use(pki.files(ADMIN_CERT))
        trickle.more(10, 30, "after the old CA was dropped")
    for s in cluster.specs:
        assert presented(s.api, pki.files(ADMIN_CERT)) == fingerprint(pki.files(s.id).cert)
    # a certificate of the old CA is refused in the handshake
    with grpc.secure_channel(cluster.specs[0].api, old_admin.credentials()) as ch, \
            pytest.raises(grpc.RpcError) as err:
        coordinator_pb2_grpc.CoordinatorStub(ch).Status(C.StatusRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    check_all_served(cluster, trickle)
