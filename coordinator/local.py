"""``hsm-coordinator local``: a complete system in the foreground, for trying
hsm-coordinator on a laptop and for the demo.

It runs the coordinator in this process, N ``agentd`` processes with the
posix mover, a simfs tree at ``DIR/fs`` and a posix archive at
``DIR/archive``. Logs go to ``DIR/logs/``. Ctrl-C or SIGTERM stops the
agents (they drain) and then the coordinator.
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

from coordinator.node import CoordinatorNode, NodeConfig
from hsm.simfs import SimFS

log = logging.getLogger(__name__)


@dataclass
class LocalSystem:
    dir: Path
    agents: int = 2
    listen: str = "127.0.0.1:0"
    archive_ids: tuple[int, ...] = (1,)
    fsname: str = "simfs"
    agent_grace: float = 30.0
    slots: str = "archive=4,restore=4,remove=2"
    node: CoordinatorNode | None = None
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)

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
    def address(self) -> str:
        assert self.node is not None
        return self.node.address

    async def start(self, timeout: float = 30.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        self.archive_root.mkdir(exist_ok=True)
        if (self.fs_root / ".simfs").exists():
            SimFS.open(self.fs_root)
        else:
            SimFS.create(self.fs_root, self.fsname)
        self.node = CoordinatorNode(NodeConfig(
            replica_id="local", listen=self.listen, archive_ids=self.archive_ids,
            default_archive_id=self.archive_ids[0], agent_grace=self.agent_grace,
        ))
        await self.node.start()
        for i in range(1, self.agents + 1):
            await self._spawn_agent(f"agent{i}")
        deadline = time.monotonic() + timeout
        while sum(1 for s in self.node.sessions.values() if s.alive) < self.agents:
            dead = [p for p in self.procs if p.returncode is not None]
            if dead:
                raise RuntimeError(f"an agentd exited with code {dead[0].returncode}; see {self.log_dir}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"agents did not connect within {timeout:.0f} s; see {self.log_dir}")
            await asyncio.sleep(0.05)

    async def _spawn_agent(self, agent_id: str) -> None:
        cmd = [
            sys.executable, "-m", "agentd.cli",
            "--coordinators", self.address,
            "--agent-id", agent_id,
            "--fs-root", str(self.fs_root),
            "--mover", "posix",
            "--archive-root", str(self.archive_root),
            "--slots", self.slots,
        ]
        for a in self.archive_ids:
            cmd += ["--archive-id", str(a)]
        logf = open(self.log_dir / f"{agent_id}.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=logf, stderr=logf,
                start_new_session=True,
            )
        finally:
            logf.close()
        self.procs.append(proc)

    async def stop(self, drain: float = 15.0) -> None:
        for p in self.procs:
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                await asyncio.wait_for(p.wait(), drain)
            except TimeoutError:
                log.warning("agentd pid %d did not stop in %.0f s; killing it", p.pid, drain)
                p.kill()
                await p.wait()
        if self.node is not None:
            await self.node.stop()


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
    announce(f"hsm-coordinator local: coordinator at {system.address}, {system.agents} agentd, pid {os.getpid()}")
    announce(f"  simfs tree:   {system.fs_root}")
    announce(f"  archive:      {system.archive_root}")
    announce(f"  logs:         {system.log_dir}")
    announce(f"  try:          export HSM_COORDINATORS={system.address}")
    announce(f"                cp /etc/hosts {system.fs_root}/ && hsmctl archive --wait {system.fs_root}/hosts")
    announce("  stop:         Ctrl-C")
    await stop.wait()
    announce("hsm-coordinator local: stopping")
    await system.stop()
    announce("hsm-coordinator local: stopped")
    return 0
