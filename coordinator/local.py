"""``hsm-coordinator local``: a complete system in the foreground, for trying
hsm-coordinator on a laptop and for the demo.

It writes a cluster configuration under ``DIR/cluster`` (kept, so a second
start reuses the cluster and its data), then runs N coordinator replica
processes (``hsm-coordinator run``, Raft data in ``DIR/data/<replica>``),
M ``agentd`` processes with the posix mover, a simfs tree at ``DIR/fs`` and
a posix archive at ``DIR/archive``. Logs go to ``DIR/logs/``. Ctrl-C or
SIGTERM stops the agents (they drain), then the replicas.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator import config as cfgmod
from coordinator.cluster import ReplicaSpec, free_ports
from hsm.simfs import SimFS
from hsm.v1 import coordinator_pb2, coordinator_pb2_grpc

log = logging.getLogger(__name__)


@dataclass
class LocalSystem:
    dir: Path
    replicas: int = 3
    shards: int = 8
    agents: int = 2
    port: int = 7600  # 0: free ports
    archive_ids: tuple[int, ...] = (1,)
    fsname: str = "simfs"
    agent_grace: float = 30.0
    log_level: str = "info"
    slots: str = "archive=4,restore=4,remove=2"
    replica_specs: list[ReplicaSpec] = field(default_factory=list)
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
        if self.config_path.exists():
            cfg, _ = cfgmod.load(self.config_path, {"replica_id": "r1"})
            self.replica_specs = list(cfg.cluster.replicas)
            return
        n, s = self.replicas, self.shards
        if self.port:
            api0, raft0 = self.port, self.port + 100
        else:
            api0 = free_ports(n)
            raft0 = free_ports(n * s)
        specs = [ReplicaSpec(f"r{k + 1}", f"127.0.0.1:{api0 + k}", f"127.0.0.1:{raft0 + k * s}") for k in range(n)]
        cfgmod.init_cluster(
            self.config_path.parent, "local", s, specs, data_dir=str(self.dir / "data"),
            archive_ids=self.archive_ids,
            extra={"agent_grace": self.agent_grace, "log_level": self.log_level,
                   "raft": {"election_min": 0.5, "election_max": 1.0, "leader_fallback": 2.0,
                            "connection_timeout": 2.0}},
        )
        self.replica_specs = specs

    async def start(self, timeout: float = 60.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        self.archive_root.mkdir(exist_ok=True)
        if (self.fs_root / ".simfs").exists():
            SimFS.open(self.fs_root)
        else:
            SimFS.create(self.fs_root, self.fsname)
        self._make_config()
        for r in self.replica_specs:
            await self.start_replica(r.id)
        await self.wait_ready(timeout)
        for i in range(1, self.agents + 1):
            await self._spawn_agent(f"agent{i}")
        await self._wait_agents(timeout)

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
               "--slots", self.slots]
        for a in self.archive_ids:
            cmd += ["--archive-id", str(a)]
        self.agent_procs[agent_id] = await self._spawn(agent_id, cmd)

    def _check_alive(self) -> None:
        for name, p in {**self.coordinators, **self.agent_procs}.items():
            if p.returncode is not None:
                raise RuntimeError(f"{name} exited with code {p.returncode}; see {self.log_dir / (name + '.log')}")

    async def wait_ready(self, timeout: float) -> None:
        """Until every running replica reports a leader for every shard."""
        deadline = time.monotonic() + timeout
        for r in self.replica_specs:
            if r.id not in self.coordinators:
                continue
            async with grpc.aio.insecure_channel(r.api) as ch:
                stub = health_pb2_grpc.HealthStub(ch)
                while True:
                    self._check_alive()
                    try:
                        resp = await stub.Check(health_pb2.HealthCheckRequest(service="hsm.v1.Coordinator"), timeout=1)
                        if resp.status == health_pb2.HealthCheckResponse.SERVING:
                            break
                    except grpc.RpcError:
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"replica {r.id} not ready within {timeout:.0f} s; see {self.log_dir}")
                    await asyncio.sleep(0.1)

    async def _wait_agents(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with grpc.aio.insecure_channel(self.replica_specs[0].api) as ch:
            stub = coordinator_pb2_grpc.CoordinatorStub(ch)
            while True:
                self._check_alive()
                try:
                    st = await stub.Status(coordinator_pb2.StatusRequest(), timeout=2)
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
    """Start, print how to use it, wait for Ctrl-C / SIGTERM, stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await system.start()
    except BaseException:
        await system.stop(drain=2.0)
        raise
    announce(f"hsm-coordinator local: coordinators at {system.addresses}, "
             f"{len(system.replica_specs)} replicas x {system.shards} shards, {system.agents} agentd, pid {os.getpid()}")
    announce(f"  simfs tree:   {system.fs_root}")
    announce(f"  archive:      {system.archive_root}")
    announce(f"  logs:         {system.log_dir}")
    announce(f"  config:       {system.config_path}")
    announce(f"  try:          export HSM_COORDINATORS={system.addresses}")
    announce(f"                cp /etc/hosts {system.fs_root}/ && hsmctl archive --wait {system.fs_root}/hosts")
    announce("  stop:         Ctrl-C")
    await stop.wait()
    announce("hsm-coordinator local: stopping")
    await system.stop()
    announce("hsm-coordinator local: stopped")
    return 0
