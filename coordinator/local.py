"""``hsm-coordinator local``: a complete system in the foreground, for trying
hsm-coordinator on a laptop and for the demo.

It writes a cluster configuration under ``DIR/cluster`` (kept, so a second
start reuses the cluster and its data), then runs N coordinator replica
processes (``hsm-coordinator run``, Raft data in ``DIR/data/<replica>``),
M ``agentd`` processes with the posix mover, a simfs tree at ``DIR/fs`` and
a posix archive at ``DIR/archive``. Logs go to ``DIR/logs/``. Ctrl-C or
SIGTERM stops the agents (they drain), then the replicas.

It never mistakes another system for its own: the ports it needs must be
free before it starts anything, every replica that answers its readiness
checks must name this cluster's id and the replica expected at that
address, and a child that dies, during start or later, stops the whole
system with a non-zero exit. A fresh tree gets a unique fsname (so FIDs of
two local trees never mean the same file) and records the cluster's id, so
hsmctl refuses to send its requests to any other cluster.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import string
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator import certs
from coordinator import config as cfgmod
from coordinator.cluster import ReplicaSpec, free_ports, split_addr
from hsm.client import metadata_value
from hsm.simfs import SimFS
from hsm.tls import TlsFiles, channel_credentials
from hsm.v1 import coordinator_pb2, coordinator_pb2_grpc
from hsm.wire import CLUSTER_METADATA_KEY, REPLICA_METADATA_KEY

log = logging.getLogger(__name__)

#: lines of a dead child's log quoted in the error
LOG_TAIL = 5


def unique_fsname() -> str:
    """A Lustre-valid fsname (8 characters) that no other tree has."""
    return "sim" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))


class ChildDied(RuntimeError):
    """A replica or agent of the local system exited."""


def _port_in_use(addr: str) -> bool:
    host, port = split_addr(addr)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        # as the servers do: a port left in TIME_WAIT by the last run is free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _tail(path: Path, lines: int = LOG_TAIL) -> str:
    try:
        text = path.read_text(errors="replace").rstrip().splitlines()[-lines:]
    except OSError:
        return ""
    return "".join(f"\n    {line}" for line in text)


@dataclass
class LocalSystem:
    dir: Path
    replicas: int = 3
    shards: int = 8
    agents: int = 2
    port: int = 7600  # 0: free ports
    archive_ids: tuple[int, ...] = (1,)
    fsname: str | None = None  # of a new tree; None: a unique one
    agent_grace: float = 30.0
    log_level: str = "info"
    slots: str = "archive=4,restore=4,remove=2"
    #: a new cluster gets a CA and certificates (mutual TLS everywhere);
    #: False: plain text (insecure: true)
    tls: bool = True
    replica_specs: list[ReplicaSpec] = field(default_factory=list)
    #: the admin's TLS files (for clients of this system), None in plain text
    client_tls: TlsFiles | None = None
    cluster_id: str = ""
    fs: SimFS | None = None
    coordinators: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    agent_procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)

    @property
    def fs_root(self) -> Path:
        return self.dir / "fs"

    @property
    def archive_root(self) -> Path:
        return self.dir / "archive"

    @property
    def log_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def config_path(self) -> Path:
        return self.dir / "cluster" / "coordinator.yaml"

    @property
    def addresses(self) -> str:
        return ",".join(r.api for r in self.replica_specs)

    def _make_config(self) -> None:
        if not self.config_path.exists():
            self._init_config()
        cfg, _ = cfgmod.load(self.config_path, {"replica_id": "r1"})
        self.replica_specs = list(cfg.cluster.replicas)
        self.shards = cfg.cluster.shards
        self.cluster_id = cfg.cluster.cluster_id
        if cfg.tls is not None:
            self.client_tls = self._tls_files(cfgmod.ADMIN_CERT)

    @property
    def tls_dir(self) -> Path:
        return self.config_path.parent / "tls"

    def _tls_files(self, name: str) -> TlsFiles:
        return TlsFiles(self.tls_dir / "ca.pem", self.tls_dir / f"{name}.pem", self.tls_dir / f"{name}.key")

    def _channel(self, address: str) -> grpc.aio.Channel:
        if self.client_tls is None:
            return grpc.aio.insecure_channel(address)
        return grpc.aio.secure_channel(address, channel_credentials(self.client_tls))

    def _init_config(self) -> None:
        n, s = self.replicas, self.shards
        if self.port:
            api0, raft0 = self.port, self.port + 100
        else:
            api0 = free_ports(n)
            raft0 = free_ports(n * s)
        specs = [ReplicaSpec(f"r{k + 1}", f"127.0.0.1:{api0 + k}", f"127.0.0.1:{raft0 + k * s}") for k in range(n)]
        cfgmod.init_cluster(
            self.config_path.parent, "local", s, specs, data_dir=str(self.dir / "data"),
            archive_ids=self.archive_ids, tls=self.tls,
            extra={"agent_grace": self.agent_grace, "log_level": self.log_level,
                   "raft": {"election_min": 0.5, "election_max": 1.0, "leader_fallback": 2.0,
                            "connection_timeout": 2.0}},
        )

    async def start(self, timeout: float = 60.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        self.archive_root.mkdir(exist_ok=True)
        self._make_config()
        if (self.fs_root / ".simfs" / "fsname").exists():
            self.fs = SimFS.open(self.fs_root)
            if self.fsname is not None and self.fsname != self.fs.fsname:
                raise RuntimeError(f"the simfs tree {self.fs_root} is named {self.fs.fsname!r}, not "
                                   f"{self.fsname!r}; a tree's fsname is fixed at creation")
        else:
            self.fs = SimFS.create(self.fs_root, self.fsname or unique_fsname())
        if self.fs.cluster_id != self.cluster_id:
            if self.fs.cluster_id:
                log.warning("simfs tree %s was served by cluster %s; it is now served by cluster %s",
                            self.fs_root, self.fs.cluster_id, self.cluster_id)
            self.fs.set_cluster_id(self.cluster_id)
        self.check_ports()
        for r in self.replica_specs:
            await self.start_replica(r.id)
        await self.wait_ready(timeout)
        for i in range(1, self.agents + 1):
            await self._spawn_agent(f"agent{i}")
        await self._wait_agents(timeout)

    def check_ports(self) -> None:
        """Every API and Raft port of the cluster is free, or nothing starts."""
        busy = []
        for r in self.replica_specs:
            for what, addr in [("API", r.api)] + [(f"Raft shard {i}", r.raft_addr(i)) for i in range(self.shards)]:
                if _port_in_use(addr):
                    busy.append(f"{addr} ({r.id} {what})")
        if busy:
            shown = ", ".join(busy[:4]) + (f" and {len(busy) - 4} more" if len(busy) > 4 else "")
            raise RuntimeError(
                f"port(s) already in use: {shown}. Another hsm-coordinator local (or another program) is "
                f"using them; stop it, or start this one in a new --dir with another --port (0: free ports)")

    async def _spawn(self, name: str, cmd: list[str]) -> asyncio.subprocess.Process:
        with open(self.log_dir / f"{name}.log", "ab") as logf:
            return await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True,
                env=dict(os.environ, GRPC_ENABLE_FORK_SUPPORT="false"))

    async def start_replica(self, replica_id: str) -> None:
        cmd = [sys.executable, "-m", "coordinator.cli", "run", "--config", str(self.config_path),
               "--replica-id", replica_id, "--data-dir", str(self.dir / "data" / replica_id)]
        self.coordinators[replica_id] = await self._spawn(replica_id, cmd)

    async def _spawn_agent(self, agent_id: str) -> None:
        cmd = [sys.executable, "-m", "agentd.cli", "--coordinators", self.addresses, "--agent-id", agent_id,
               "--fs-root", str(self.fs_root), "--mover", "posix", "--archive-root", str(self.archive_root),
               "--slots", self.slots, "--cluster-id", self.cluster_id]
        for a in self.archive_ids:
            cmd += ["--archive-id", str(a)]
        if self.client_tls is not None:
            if not (self.tls_dir / f"{agent_id}.pem").exists():
                certs.issue(self.tls_dir, agent_id, "agent")
            f = self._tls_files(agent_id)
            cmd += ["--tls-ca", str(f.ca), "--tls-cert", str(f.cert), "--tls-key", str(f.key)]
        self.agent_procs[agent_id] = await self._spawn(agent_id, cmd)

    def children(self) -> dict[str, asyncio.subprocess.Process]:
        return {**self.coordinators, **self.agent_procs}

    def died(self, name: str) -> ChildDied:
        p = self.children()[name]
        log_path = self.log_dir / f"{name}.log"
        return ChildDied(f"{name} exited with code {p.returncode}; the end of {log_path}:{_tail(log_path)}")

    def _check_alive(self) -> None:
        for name, p in self.children().items():
            if p.returncode is not None:
                raise self.died(name)

    def check_identity(self, spec: ReplicaSpec, metadata: Any) -> None:
        """The replica answering at *spec*'s address must be *spec* of this cluster."""
        md = metadata or ()
        got_cluster = metadata_value(md, CLUSTER_METADATA_KEY)
        got_replica = metadata_value(md, REPLICA_METADATA_KEY)
        if got_cluster != self.cluster_id or got_replica != spec.id:
            raise RuntimeError(
                f"{spec.api} is answered by replica {got_replica or '?'} of cluster {got_cluster or '?'}, not by "
                f"{spec.id} of this cluster ({self.cluster_id}): another system is using that address")

    async def wait_ready(self, timeout: float) -> None:
        """Until every running replica reports a leader for every shard."""
        deadline = time.monotonic() + timeout
        for r in self.replica_specs:
            if r.id not in self.coordinators:
                continue
            async with self._channel(r.api) as ch:
                stub = health_pb2_grpc.HealthStub(ch)
                while True:
                    self._check_alive()
                    call = stub.Check(health_pb2.HealthCheckRequest(service="hsm.v1.Coordinator"), timeout=1)
                    try:
                        resp = await call
                        self.check_identity(r, await call.initial_metadata())
                        if resp.status == health_pb2.HealthCheckResponse.SERVING:
                            break
                    except grpc.RpcError:
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"replica {r.id} not ready within {timeout:.0f} s; see {self.log_dir}")
                    await asyncio.sleep(0.1)

    async def _wait_agents(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with self._channel(self.replica_specs[0].api) as ch:
            stub = coordinator_pb2_grpc.CoordinatorStub(ch)
            while True:
                self._check_alive()
                call = stub.Status(coordinator_pb2.StatusRequest(), timeout=2)
                try:
                    st = await call
                    self.check_identity(self.replica_specs[0], await call.initial_metadata())
                    if sum(1 for a in st.agents if a.replica) >= self.agents:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"agents did not connect within {timeout:.0f} s; see {self.log_dir}")
                await asyncio.sleep(0.1)

    async def _terminate(self, procs: dict[str, asyncio.subprocess.Process], wait: float) -> None:
        for p in procs.values():
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
        for name, p in procs.items():
            try:
                await asyncio.wait_for(p.wait(), wait)
            except TimeoutError:
                log.warning("%s (pid %d) did not stop in %.0f s; killing it", name, p.pid, wait)
                p.kill()
                await p.wait()

    async def stop(self, drain: float = 20.0) -> None:
        await self._terminate(self.agent_procs, drain)
        await self._terminate(self.coordinators, drain)


async def run_foreground(system: LocalSystem, announce: Callable[[str], None] = print) -> int:
    """Start, print how to use it, wait for Ctrl-C / SIGTERM or for a child
    to die, stop. Returns 0 after Ctrl-C / SIGTERM, 1 when a child died."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await system.start()
    except BaseException:
        await system.stop(drain=2.0)
        raise
    fsname = system.fs.fsname if system.fs is not None else "?"
    announce(f"hsm-coordinator local: coordinators at {system.addresses}, "
             f"{len(system.replica_specs)} replicas x {system.shards} shards, {system.agents} agentd, pid {os.getpid()}")
    announce(f"  cluster id:   {system.cluster_id}")
    announce(f"  simfs tree:   {system.fs_root} (fsname {fsname})")
    announce(f"  archive:      {system.archive_root}")
    announce(f"  logs:         {system.log_dir}")
    announce(f"  config:       {system.config_path}")
    announce(f"  try:          export HSM_COORDINATORS={system.addresses} HSM_CLUSTER={system.cluster_id}")
    if system.client_tls is not None:
        t = system.client_tls
        announce(f"                export HSM_TLS_CA={t.ca} HSM_TLS_CERT={t.cert} HSM_TLS_KEY={t.key}")
    announce(f"                cp /etc/hosts {system.fs_root}/ && hsmctl archive --wait {system.fs_root}/hosts")
    announce("  stop:         Ctrl-C")
    watchers = {asyncio.ensure_future(p.wait()): name for name, p in system.children().items()}
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({stopper, *watchers}, return_when=asyncio.FIRST_COMPLETED)
    dead = sorted(watchers[t] for t in done if t in watchers)
    for t in (stopper, *watchers):
        t.cancel()
    if dead:
        announce(f"hsm-coordinator local: {system.died(dead[0])}")
        announce("hsm-coordinator local: stopping the rest")
        await system.stop(drain=5.0)
        announce("hsm-coordinator local: stopped")
        return 1
    announce("hsm-coordinator local: stopping")
    await system.stop()
    announce("hsm-coordinator local: stopped")
    return 0
