"""A real multi-process cluster for system tests: replica processes started
with ``hsm-coordinator run`` from a config written by ``init``, agentd
processes, kills, restarts, and the cross-replica consistency checker.

Mutual TLS is on, as in production (no system test needs plain text): ``init`` writes the cluster
CA, a certificate per replica and the ``admin`` one; every agentd started
here gets its own (role agent, CN = its agent id); the cluster's own checks
(health, status, leaders) present the admin certificate, and tests build
their clients from ``client_tls`` (a ``CoordinatorClient``), ``env``
(``HSM_TLS_*`` for hsmctl or hsm-bridge subprocesses) or ``pki`` (other
identities and roles)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator import certs
from coordinator import config as cfgmod
from coordinator.cluster import ReplicaSpec, free_ports
from hsm.tls import ENV_CA, ENV_CERT, ENV_KEY, TlsFiles, channel_credentials
from hsm.v1 import coordinator_pb2 as C
from hsm.v1 import coordinator_pb2_grpc

ENV = dict(os.environ, GRPC_ENABLE_FORK_SUPPORT="false")


def until(cond: Callable[[], Any], timeout: float, what: str | Callable[[], str], interval: float = 0.05) -> Any:
    """Poll *cond* until it is true; on timeout fail with *what* (a
    callable is asked for the message only then)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            msg = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {msg}")
        time.sleep(interval)


async def until_async(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    """``until`` for coroutines: polls without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


class Pki:
    """A cluster CA's directory (``ca.pem``, ``ca.key``, from ``hsm-coordinator
    certs init`` or ``init``) and the certificates tests issue from it, each
    as ``NAME.pem`` / ``NAME.key`` beside the CA."""

    def __init__(self, directory: Path, create: bool = False) -> None:
        self.dir = directory
        if create:
            certs.init_ca(directory)

    @property
    def ca(self) -> Path:
        return self.dir / certs.CA_CERT

    def files(self, name: str) -> TlsFiles:
        return TlsFiles(self.ca, self.dir / f"{name}.pem", self.dir / f"{name}.key")

    def issue(self, name: str, role: str, hosts: tuple[str, ...] = ()) -> TlsFiles:
        """*name*'s files, issued with *role* unless they exist already."""
        f = self.files(name)
        if not f.cert.exists():
            certs.issue(self.dir, name, role, hosts=hosts)
        return f

    def env(self, name: str = cfgmod.ADMIN_CERT, base: dict[str, str] | None = None) -> dict[str, str]:
        """*base* (default: ``ENV``) with HSM_TLS_* naming *name*'s files."""
        f = self.files(name)
        return dict(ENV if base is None else base, **{ENV_CA: str(f.ca), ENV_CERT: str(f.cert), ENV_KEY: str(f.key)})

    def args(self, name: str) -> list[str]:
        """``--tls-ca/--tls-cert/--tls-key`` naming *name*'s files."""
        f = self.files(name)
        return ["--tls-ca", str(f.ca), "--tls-cert", str(f.cert), "--tls-key", str(f.key)]

    def credentials(self, name: str = cfgmod.ADMIN_CERT) -> grpc.ChannelCredentials:
        return channel_credentials(self.files(name))


class ProcCluster:
    def __init__(self, tmp: Path, replicas: int = 3, shards: int = 4, raft: dict[str, Any] | None = None,
                 agent_grace: float = 5.0, extra: dict[str, Any] | None = None,
                 replication: int | None = None, raft_room: int = 0) -> None:
        self.tmp = tmp
        self.shards = shards
        self.logs = tmp / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        api0 = free_ports(replicas)
        # each replica's Raft ports: one per shard, and *raft_room* more for the shards a split adds
        stride = shards + raft_room
        raft0 = free_ports(replicas * stride)
        self.specs = [ReplicaSpec(f"r{k + 1}", f"127.0.0.1:{api0 + k}", f"127.0.0.1:{raft0 + k * stride}")
                      for k in range(replicas)]
        tuning = {"election_min": 0.4, "election_max": 0.8, "leader_fallback": 1.5, "connection_timeout": 1.0,
                  "connection_retry": 0.2, "rebalance_interval": 1.0, **(raft or {})}
        self.config, _ = cfgmod.init_cluster(tmp / "etc", "sys", shards, self.specs, data_dir=str(tmp / "data"),
                                             extra={"agent_grace": agent_grace, "heartbeat_interval": 1.0,
                                                    "propose_timeout": 3.0, "raft": tuning, **(extra or {})},
                                             tls=True, replication=replication)
        #: each shard's group (every replica without a replication)
        self.placement = cfgmod.load(self.config, {"replica_id": self.specs[0].id,
                                                   "data_dir": str(tmp / "data")})[0].cluster.placement
        #: the cluster's CA and certificates
        self.pki = Pki(tmp / "etc" / "tls")
        #: the admin's TLS files, for clients
        self.client_tls = self.pki.files(cfgmod.ADMIN_CERT)
        #: environment for hsmctl / hsm-bridge subprocesses: ENV + the admin's HSM_TLS_*
        self.env = self.pki.env()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.agent_args: dict[str, tuple[str, ...]] = {}  # agent -> the extra arguments it was started with
        self.agent_killed: dict[str, float] = {}  # agent -> when it was killed (runs it left open end there)

    @property
    def addresses(self) -> str:
        return ",".join(s.api for s in self.specs)

    def spec(self, rid: str) -> ReplicaSpec:
        return next(s for s in self.specs if s.id == rid)

    def channel(self, address: str, name: str = cfgmod.ADMIN_CERT) -> grpc.Channel:
        """A channel to *address* presenting *name*'s certificate."""
        return grpc.secure_channel(address, self.pki.credentials(name))

    def start(self, rid: str, env: dict[str, str] | None = None) -> None:
        """Start replica *rid* (*env*: more environment variables)."""
        # a replica added by a test gets its certificate here
        self.pki.issue(rid, "replica", hosts=(self.spec(rid).api.rsplit(":", 1)[0],))
        with open(self.logs / f"{rid}.log", "ab") as log:
            self.procs[rid] = subprocess.Popen(
                [sys.executable, "-m", "coordinator.cli", "run", "--config", str(self.config), "--replica-id", rid,
                 "--data-dir", str(self.tmp / "data" / rid), "--log-level", "info"],
                stdout=log, stderr=log, env={**ENV, **(env or {})}, start_new_session=True)

    def start_all(self) -> None:
        for s in self.specs:
            self.start(s.id)
        self.wait_ready()

    def kill(self, rid: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs.pop(rid)
        p.send_signal(sig)
        p.wait(30)

    def live(self) -> list[ReplicaSpec]:
        return [s for s in self.specs if s.id in self.procs]

    def _health(self, api: str) -> bool:
        try:
            with self.channel(api) as ch:
                r = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service="hsm.v1.Coordinator"), timeout=1)
            return r.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False

    def wait_ready(self, timeout: float = 30) -> None:
        for s in self.live():
            until(lambda s=s: self._check_running() or self._health(s.api), timeout, f"replica {s.id} ready")

    def _check_running(self) -> bool:
        for rid, p in self.procs.items():
            if p.poll() is not None:
                raise AssertionError(f"replica {rid} exited with {p.returncode}: "
                                     + (self.logs / f"{rid}.log").read_text()[-3000:])
        return False

    def status(self, rid: str, digest: bool = False, local: bool = False) -> C.StatusResponse:
        """*rid*'s Status: the cluster's, or with *local* only the shards it holds, as it holds them."""
        with self.channel(self.spec(rid).api) as ch:
            return coordinator_pb2_grpc.CoordinatorStub(ch).Status(
                C.StatusRequest(digest=digest, shards=range(self.shards) if local else ()), timeout=10)

    def holds(self, rid: str, shard: int) -> bool:
        return not self.placement or rid in self.placement[shard]

    def leaders(self, rid: str) -> dict[int, str]:
        with self.channel(self.spec(rid).api) as ch:
            info = coordinator_pb2_grpc.CoordinatorStub(ch).ClusterInfo(C.ClusterInfoRequest(), timeout=5)
        return {s.shard: s.leader for s in info.shards}

    def converged(self) -> bool:
        """Every live replica applied the same entries and holds the same
        actions in the same states, shard by shard."""
        views = {s.id: {r.shard: r for r in self.status(s.id, digest=True, local=True).shards} for s in self.live()}
        for shard in range(self.shards):
            # every replica that holds the shard now (a move may have changed its group)
            rows = {(v[shard].applied_index, v[shard].digest) for v in views.values() if shard in v}
            if len(rows) > 1:
                return False
        return True

    def check_converged(self, timeout: float = 30) -> None:
        """The checker run after each system test: fails on divergence."""
        try:
            until(self.converged, timeout, "replicas to hold identical shard states", interval=0.2)
        except AssertionError:
            views = {s.id: [(x.shard, x.applied_index, x.digest[:12]) for x in self.status(s.id, True, True).shards]
                     for s in self.live()}
            raise AssertionError(f"replicas diverged: {views}") from None

    def start_agent(self, agent_id: str, *extra: str) -> None:
        """An agentd process; with TLS it presents its own certificate (role
        agent, CN *agent_id*), issued on its first start."""
        self.pki.issue(agent_id, "agent")
        tls = self.pki.args(agent_id)
        self.agent_args[agent_id] = extra
        with open(self.logs / f"{agent_id}.log", "ab") as log:
            self.agents[agent_id] = subprocess.Popen(
                [sys.executable, "-m", "agentd.cli", "--coordinators", self.addresses, "--agent-id", agent_id,
                 *tls, *extra], stdout=log, stderr=log, env=ENV, start_new_session=True)

    def kill_agent(self, agent_id: str, sig: int = signal.SIGKILL) -> float:
        """Signal an agent; for SIGKILL wait for it and return the time."""
        p = self.agents[agent_id]
        t = time.time()
        p.send_signal(sig)
        if sig == signal.SIGKILL:
            p.wait(30)
            self.agent_killed[agent_id] = t
        return t

    def leader_of(self, shard: int) -> str:
        """The replica id leading *shard*, as the live replicas agree."""
        def agreed() -> str:
            views = {self.leaders(s.id).get(shard, "") for s in self.live()}
            return views.pop() if len(views) == 1 else ""
        return str(until(agreed, 15, f"a leader of shard {shard}"))

    def stop(self) -> None:
        """Agents stop (SIGTERM: they drain), then the replicas are killed:
        the test has checked what it wanted, and a graceful stop of every
        replica at once only waits for leadership hand-overs nobody takes."""
        for p in self.agents.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)  # a test may have left one stopped
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            p.send_signal(signal.SIGCONT)
        for p in self.agents.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
            p.wait()
        self.procs.clear()
        self.agents.clear()

    def agent_runs(self) -> list[tuple[str, int, int, float, float]]:
        """(agent, action id, attempt, start, end) of every run in the agents'
        logs; a run of a killed agent without an end ends when it was killed."""
        pat = re.compile(r"^(\S+ \S+) INFO agentd\.daemon: action (\d+)/(\d+) \S+ \S+ (started|succeeded|ended)")
        runs: dict[tuple[str, int, int], list[float]] = {}
        for agent in self.agents:
            for line in (self.logs / f"{agent}.log").read_text().splitlines():
                m = pat.match(line)
                if not m:
                    continue
                t = time.mktime(time.strptime(m.group(1).split(",")[0], "%Y-%m-%d %H:%M:%S")) + \
                    int(m.group(1).split(",")[1]) / 1000
                key = (agent, int(m.group(2)), int(m.group(3)))
                runs.setdefault(key, []).append(t)
        out = []
        for (a, i, att), ts in runs.items():
            end = ts[-1] if len(ts) > 1 else self.agent_killed.get(a, float("inf"))
            out.append((a, i, att, ts[0], end))
        return out


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:*port*."""
    import socket

    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def no_concurrent_runs(runs: list[tuple[str, int, int, float, float]]) -> list[str]:
    """Actions that ran on two agents (or twice) at overlapping times. The
    parts of a striped archive (their attempts carry coordinator.stripes'
    PART_BIT) run at once by design: each part alone must not overlap
    itself, nor any part a run of the action itself (its anchor or seal)."""
    from coordinator.stripes import part_of

    by_action: dict[tuple[int, int], list[tuple[float, float, str, int]]] = {}
    for agent, action_id, attempt, start, end in runs:
        part = part_of(attempt)
        by_action.setdefault((action_id, -1 if part is None else part[0]), []).append((start, end, agent, attempt))
    bad = []
    for (action_id, part), spans in by_action.items():
        spans.sort()
        for (_s1, e1, a1, t1), (s2, _e2, a2, t2) in zip(spans, spans[1:], strict=False):
            if s2 < e1:
                bad.append(f"action {action_id}: attempt {t1} on {a1} and attempt {t2} on {a2} overlap")
        for s1, e1, a1, t1 in spans if part >= 0 else ():
            for s2, e2, a2, t2 in by_action.get((action_id, -1), ()):
                if s1 < e2 and s2 < e1:
                    bad.append(f"action {action_id}: part attempt {t1} on {a1} overlaps attempt {t2} on {a2}")
    return bad


def tls_replica(factory: Callable[..., Any], directory: Path, **settings: Any) -> tuple[Any, Pki]:
    """An in-process one-replica coordinator (conftest's ``coordinator_factory``)
    with mutual TLS, for tests that run clients, bridges or agents as real
    processes: the CA in *directory* (created on the first call), the
    replica's certificate (CN ``test``, the replica id, for 127.0.0.1) and
    an ``admin`` one."""
    pki = Pki(directory, create=not (directory / certs.CA_CERT).exists())
    pki.issue(cfgmod.ADMIN_CERT, "admin")
    replica = factory(tls=pki.issue("test", "replica", hosts=("127.0.0.1",)), **settings)
    return replica, pki
