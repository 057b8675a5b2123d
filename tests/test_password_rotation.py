"""The cluster password: sealed with the first line of the password file,
any line accepted (``coordinator.raft.encryptor._Keyring``), so that it can
be rotated replica by replica without losing a quorum; and the warning of a
replica whose Raft traffic is authenticated only (``raft: {encrypt:
false}``).

The rotation runs on real replica processes (``hsm-coordinator run``, mutual
TLS as ``init`` sets it up), each with its own password file as on separate
hosts: commits keep working and
every replica keeps up at every step of docs/cluster-config.md's
procedure, and at the end a replica that knows only the old password is
refused by the others and changes nothing."""

from __future__ import annotations

import itertools
import logging
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from coordinator import config as cfgmod
from coordinator.cluster import ReplicaSpec, free_ports
from coordinator.raft.encryptor import MAX_PASSWORDS, make_sealer
from hsm.client import CoordinatorClient, CoordinatorError, submit_item
from hsm.v1 import coordinator_pb2 as C
from hsm.v1 import coordinator_pb2_grpc
from tests.cluster import Pki, until
from tests.conftest import FAST_RAFT

OLD = "old-" + "o" * 20
NEW = "new-" + "n" * 20


# ------------------------------------------------------------------ sealing


@pytest.mark.parametrize("encrypt", [True, False], ids=["fernet", "hmac"])
def test_sealed_with_the_first_password_and_opened_with_any(encrypt: bool,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="coordinator.raft")
    step = {"start": OLD, "a": f"{OLD}\n{NEW}", "b": f"{NEW}\n{OLD}", "c": NEW}
    sealers = {k: make_sealer(v, 3, encrypt) for k, v in step.items()}

    def opens(receiver: str, sender: str) -> bool:
        token = sealers[sender].encrypt_at_time(b"payload", 42)
        try:
            ok = sealers[receiver].extract_timestamp(token) == 42
            return ok and sealers[receiver].decrypt(token) == b"payload"
        except ValueError:
            return False

    # neighbouring steps of the rotation understand each other both ways:
    # a rolling restart always has a quorum
    for x, y in itertools.pairwise(step):
        assert opens(x, y) and opens(y, x), (x, y)
    # after it, the old password alone is refused both ways
    assert not opens("start", "c") and not opens("c", "start")
    assert not opens("start", "b"), "a replica sealing with the new password cannot be read with the old one"
    assert any("failed authentication" in r.getMessage() for r in caplog.records)
    # a shard's key is its own: the same password on another shard does not open it
    with pytest.raises(ValueError):
        make_sealer(NEW, 4, encrypt).decrypt(sealers["c"].encrypt_at_time(b"x", 1))


def test_a_single_password_seals_as_before_rotations_existed() -> None:
    from pysyncobj.encryptor import getEncryptor

    legacy = getEncryptor(f"{NEW}\0hsm-coordinator shard 0")
    token = legacy.encrypt_at_time(b"old replica", 7)
    assert make_sealer(NEW, 0, True).decrypt(token) == b"old replica"
    assert legacy.decrypt(make_sealer(NEW, 0, True).encrypt_at_time(b"new replica", 8)) == b"new replica"


# ------------------------------------------------------------ configuration


def _config(tmp: Path, password: str, cluster_id: str | None = "rot-test") -> Path:
    pw = tmp / "raft-password"
    pw.write_text(password)
    pw.chmod(0o600)
    cluster: dict[str, Any] = {"name": "c", "shards": 1, "password_file": str(pw),
                               "replicas": [{"id": "r1", "api": "127.0.0.1:7600", "raft": "127.0.0.1:7700"}]}
    if cluster_id:
        cluster["id"] = cluster_id
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump({"cluster": cluster, "replica_id": "r1", "insecure": True, "data_dir": str(tmp / "data")}))
    return path


def test_a_password_file_may_list_the_new_password_and_the_old_ones(tmp_path: Path) -> None:
    cfg, _ = cfgmod.load(_config(tmp_path, f"{NEW}\n\n  {OLD}  \n"))
    assert cfg.cluster.password == f"{NEW}\n{OLD}"
    cfg, _ = cfgmod.load(_config(tmp_path, f"{NEW}\n"))
    assert cfg.cluster.password == NEW  # one line: as before


@pytest.mark.parametrize("text, cluster_id, words", [
    (f"{NEW}\nshort", "rot-test", "password 2 (line 2) holds fewer than 16 characters"),
    (f"{NEW}\n{NEW}", "rot-test", "holds the same password twice"),
    ("\n".join(f"{k}-{NEW}" for k in range(MAX_PASSWORDS + 1)), "rot-test", f"at most {MAX_PASSWORDS}"),
    (f"{NEW}\n{OLD}", None, "cluster.id is required while the password file holds more than one password"),
    ("\n\n", "rot-test", "fewer than 16 characters"),
])
def test_a_bad_password_file_is_refused_at_start(tmp_path: Path, text: str, cluster_id: str | None,
                                                 words: str) -> None:
    with pytest.raises(cfgmod.ConfigError, match=re.escape(words)):
        cfgmod.load(_config(tmp_path, text, cluster_id))


# ---------------------------------------------------- authentication only


@pytest.mark.parametrize("encrypt", [False, True])
def test_authentication_only_raft_is_warned_about_at_start(coordinator_factory: Any, encrypt: bool,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="coordinator.node")
    rc = coordinator_factory(shards=2, raft=replace(FAST_RAFT, encrypt=encrypt))
    lines = [r.getMessage() for r in caplog.records if "NOT encrypted" in r.getMessage()]
    if encrypt:
        assert not lines
        return
    [line] = lines
    assert line.startswith("raft encrypt: false")
    assert rc.config.cluster.replicas[0].raft in line and "next 1 port(s)" in line
    for exposed in ("FIDs", "file system names", "requesters", "snapshots"):
        assert exposed in line
    assert "Forged or altered messages are still refused" in line


# ---------------------------------------------- rolling rotation, processes

ENV = dict(os.environ, GRPC_ENABLE_FORK_SUPPORT="false")


class Replicas:
    """Replica processes, each with its own configuration and password
    file (as on separate hosts)."""

    def __init__(self, tmp: Path, n: int = 3, shards: int = 2) -> None:
        self.tmp = tmp
        self.shards = shards
        api0, raft0 = free_ports(n), free_ports(n * shards)
        self.specs = [ReplicaSpec(f"r{k + 1}", f"127.0.0.1:{api0 + k}", f"127.0.0.1:{raft0 + k * shards}")
                      for k in range(n)]
        tuning = {"election_min": 0.4, "election_max": 0.8, "leader_fallback": 1.5, "connection_timeout": 1.0,
                  "connection_retry": 0.2, "rebalance_interval": 1.0}
        shared, _ = cfgmod.init_cluster(tmp / "etc", "rot", shards, self.specs, data_dir=str(tmp / "data"),
                                        extra={"raft": tuning, "propose_timeout": 3.0}, tls=True)
        #: the cluster's CA and certificates (a replica's each, the admin's for the test)
        self.pki = Pki(tmp / "etc" / "tls")
        self.admin = self.pki.files(cfgmod.ADMIN_CERT)
        doc = yaml.safe_load(shared.read_text())
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        for s in self.specs:
            host = tmp / s.id
            host.mkdir()
            doc["cluster"]["password_file"] = str(host / "raft-password")
            (host / "coordinator.yaml").write_text(yaml.safe_dump(doc))
            self.write_password(s.id, OLD)

    def write_password(self, rid: str, text: str) -> None:
        """What the admin does on the replica's host (the file stays 0600)."""
        pw = self.tmp / rid / "raft-password"
        fd = os.open(pw, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")

    def log(self, rid: str) -> str:
        return (self.tmp / rid / "log").read_text(errors="replace")

    def start(self, rid: str) -> None:
        with open(self.tmp / rid / "log", "ab") as log:
            self.procs[rid] = subprocess.Popen(
                [sys.executable, "-m", "coordinator.cli", "run", "--config", str(self.tmp / rid / "coordinator.yaml"),
                 "--replica-id", rid, "--data-dir", str(self.tmp / "data" / rid), "--log-level", "info"],
                stdout=log, stderr=log, env=ENV, start_new_session=True)

    def stop(self, rid: str) -> None:
        p = self.procs.pop(rid)
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def close(self) -> None:
        for p in self.procs.values():
            p.kill()
            p.wait()
        self.procs.clear()

    def api(self, rid: str) -> str:
        return next(s.api for s in self.specs if s.id == rid)

    def view(self, rid: str) -> list[tuple[int, str, str, int]] | None:
        """Per shard: applied index, digest, leader, term as *rid* sees them."""
        p = self.procs.get(rid)
        if p is not None and p.poll() is not None:
            raise AssertionError(f"replica {rid} exited with {p.returncode}: {self.log(rid)[-3000:]}")
        try:
            with grpc.secure_channel(self.api(rid), self.pki.credentials()) as ch:
                stub = coordinator_pb2_grpc.CoordinatorStub(ch)
                st = stub.Status(C.StatusRequest(digest=True), timeout=10)
                info = stub.ClusterInfo(C.ClusterInfoRequest(), timeout=10)
        except grpc.RpcError:
            return None
        return [(s.applied_index, s.digest, i.leader, i.term) for s, i in zip(st.shards, info.shards, strict=True)]

    def converged(self, rids: list[str]) -> bool:
        views = [self.view(r) for r in rids]
        if any(v is None or any(not leader for _, _, leader, _ in v) for v in views):
            return False
        return all([x[:3] for x in v] == [x[:3] for x in views[0]] for v in views)  # type: ignore[union-attr]


def test_a_rolling_password_rotation_keeps_a_quorum_and_locks_the_old_password_out(tmp_path: Path) -> None:
    rs = Replicas(tmp_path)
    ids = [s.id for s in rs.specs]
    oids = itertools.count(1)
    committed: list[int] = []

    def commit(what: str) -> None:
        """Files on every shard, all acknowledged (a majority wrote them)."""
        batch = [next(oids) for _ in range(8)]
        items = [submit_item("fs1", f"[0x200000400:{n:#x}:0x0]", "archive", idempotency_key=f"rot-{n}")
                 for n in batch]
        deadline = time.monotonic() + 30
        while True:  # leadership moves back to a restarted replica (its preferred
            try:     # shards): a retry with the same keys is answered, never doubled
                with CoordinatorClient([rs.api(r) for r in rs.procs], timeout=30, retry_unavailable=30,
                                       tls=rs.admin) as client:
                    results = client.submit(items)
                break
            except (grpc.RpcError, CoordinatorError) as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{what}: no commit in 30 s: {exc}") from None
                time.sleep(0.2)
        assert all(r.outcome == C.CREATED for r in results), (what, results)
        committed.extend(r.action_id for r in results)

    try:
        for r in ids:
            rs.start(r)
        until(lambda: rs.converged(ids), 60, "the cluster to start")
        commit("before the rotation")
        # (a) the new password accepted, (b) sealing with it, (c) the old one gone
        for step, text in (("a", f"{OLD}\n{NEW}"), ("b", f"{NEW}\n{OLD}"), ("c", NEW)):
            for r in ids:
                rs.write_password(r, text)
                rs.stop(r)
                commit(f"step {step}, {r} down")  # the two others are a quorum
                rs.start(r)
                # the restarted replica is back in every group: it applies
                # what the others committed while it was down, and more
                until(lambda: rs.converged(ids), 60, f"step {step}: {r} to catch up")
                commit(f"step {step}, {r} back")
                until(lambda: rs.converged(ids), 60, f"step {step}: {r} to apply")
        refused = [line for r in ids for line in rs.log(r).splitlines() if "failed authentication" in line]
        assert not refused, f"a message was refused on the way: {refused}"

        # a replica that knows only the old password is refused by the others
        rs.write_password("r3", OLD)
        rs.stop("r3")
        rs.start("r3")
        until(lambda: rs.view("r3") is not None, 30, "r3 to answer")
        # r3's stop handed its shards' leadership over: wait until r1 and
        # r2 agree on leaders and terms that stay put
        def settled() -> Any:
            first = rs.view("r1")
            time.sleep(1.0)
            again = [rs.view(r) for r in ("r1", "r2")]
            keep = [[(x[2], x[3]) for x in v] if v else None for v in (first, *again)]
            return first if keep[0] is not None and keep[0] == keep[1] == keep[2] else None

        before = until(settled, 30, "r1 and r2 to settle")
        commit("r3 locked out")
        time.sleep(3)  # r3 calls elections meanwhile: its votes must not be read
        commit("r3 still locked out")
        until(lambda: rs.converged(["r1", "r2"]), 30, "r1 and r2")
        after, old = rs.view("r1"), rs.view("r3")
        assert after is not None and old is not None
        # the others' leaders and terms did not move: nothing r3 sent was read
        assert [(leader, term) for _, _, leader, term in after] == [(leader, term) for _, _, leader, term in before], \
            (before, after, rs.log("r1")[-3000:])
        # and r3 received nothing: it applied none of the new commits
        assert all(o[0] < a[0] for o, a in zip(old, after, strict=True)), (old, after)
        for r in ("r1", "r2"):
            until(lambda r=r: "failed authentication" in rs.log(r), 15, f"{r} to log the refusal")
        # given the new password, it catches up with everything
        rs.write_password("r3", NEW)
        rs.stop("r3")
        rs.start("r3")
        until(lambda: rs.converged(ids), 60, "r3 to catch up with the new password")
        with CoordinatorClient([rs.api("r3")], timeout=30, tls=rs.admin) as client:
            listed = {a.action_id for a in client.list_actions()}
        assert set(committed) <= listed
    finally:
        rs.close()
