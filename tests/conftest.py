"""Shared fixtures: a real coordinator (real gRPC on a free loopback port),
running on its own event loop in a background thread so tests can use the
synchronous client and real agentd processes against it.

Mutual TLS is on, as in production: the session's CA (``tls_ca``, a
``tests.cluster.Pki`` in a temporary directory) issues the replica's
certificate (CN ``test``, the replica id, for 127.0.0.1) and, on first use,
every certificate a test presents: ``RunningCoordinator.channel(role,
name)`` (a gRPC channel), ``.client(role, name)`` (a ``CoordinatorClient``),
``.tls`` (the files, e.g. an agent's ``AgentConfig.tls``), ``.env`` and
``.args`` (``HSM_TLS_*`` or ``--tls-*`` for hsmctl and agentd). The admin's
certificate is the default; an agent's is named by its agent id (the
replica checks that they are equal). Plain text only where a test asks for
it (``coordinator_factory(insecure=True)``: a test of the insecure mode)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from coordinator import certs
from coordinator.cluster import ClusterSpec, ReplicaSpec, free_ports
from coordinator.node import CoordinatorNode, NodeConfig
from coordinator.raft import RaftTuning
from coordinator.roles import ADMIN, AGENT, REPLICA
from coordinator.server import services
from hsm.client import CoordinatorClient
from hsm.tls import ENV_CA, ENV_CERT, ENV_KEY, TlsFiles, channel_credentials
from tests.cluster import Pki

#: the replica id (and certificate name) of the in-process coordinators
REPLICA_ID = "test"


class SessionCa:
    """The session's cluster CA (``tests.cluster.Pki``) and the certificates
    tests present, issued on first use from it into one directory per role
    (``ROLE/NAME.pem``, ``ROLE/NAME.key``): a name may hold several roles."""

    def __init__(self, directory: Path) -> None:
        self.pki = Pki(directory, create=True)
        self._lock = threading.Lock()

    def files(self, role: str = ADMIN, name: str | None = None, hosts: tuple[str, ...] = ()) -> TlsFiles:
        """*name*'s (default: the role's name) certificate with *role*."""
        name = name or role
        out = self.pki.dir / role
        f = TlsFiles(self.pki.ca, out / f"{name}.pem", out / f"{name}.key")
        with self._lock:
            if not f.cert.exists():
                certs.issue(self.pki.dir, name, role, out_dir=out, hosts=hosts)
        return f

    def replica(self, replica_id: str = REPLICA_ID) -> TlsFiles:
        """What a replica on 127.0.0.1 serves (and presents to its peers)."""
        return self.files(REPLICA, replica_id, hosts=("127.0.0.1",))

    def agent(self, agent_id: str) -> TlsFiles:
        """Agent *agent_id*'s certificate (role agent, CN its agent id)."""
        return self.files(AGENT, agent_id)


def tls_env(tls: TlsFiles | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """*base* (default: none) with ``HSM_TLS_*`` naming *tls* (without any, for None)."""
    env = {k: v for k, v in (base or {}).items() if k not in (ENV_CA, ENV_CERT, ENV_KEY)}
    if tls is not None:
        env.update({ENV_CA: str(tls.ca), ENV_CERT: str(tls.cert), ENV_KEY: str(tls.key)})
    return env


def tls_args(tls: TlsFiles | None) -> list[str]:
    """``--tls-ca/--tls-cert/--tls-key`` naming *tls* (none for None)."""
    return [] if tls is None else ["--tls-ca", str(tls.ca), "--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]


class RunningCoordinator:
    """A CoordinatorNode on its own loop thread. ``call(fn)`` runs a
    function on the node's loop and returns its result (for inspecting
    state from a test without racing the loop).

    *ca*: the CA that issued the certificate the node serves (``config.tls``),
    from which ``tls``, ``channel``, ``client``, ``env`` and ``args`` take
    the caller's certificate; without ``config.tls`` (insecure mode) they
    speak plain text."""

    def __init__(self, config: NodeConfig, ca: SessionCa | None = None) -> None:
        self.config = config
        self.ca = ca
        self.loop = asyncio.new_event_loop()
        self.node = CoordinatorNode(config)
        self._thread = threading.Thread(target=self.loop.run_forever, name="coordinator", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)

    async def _start(self) -> None:
        await self.node.start(services(self.node))
        await asyncio.wait_for(self.node.ready.wait(), 20)
        while not all(s.leader_ready for s in self.node.shards):
            await asyncio.sleep(0.01)

    @property
    def address(self) -> str:
        return self.node.address

    def tls(self, role: str = ADMIN, name: str | None = None) -> TlsFiles | None:
        """The files of a caller with *role* named *name* (default: the
        role's name; an agent: its agent id), issued by the node's CA on
        first use; None when the node speaks plain text."""
        if self.config.tls is None:
            return None
        if self.ca is None:
            raise RuntimeError("this coordinator serves a certificate of the test's own CA: use that CA's files")
        return self.ca.files(role, name)

    def channel(self, role: str = ADMIN, name: str | None = None,
                options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A channel to the node presenting *role*/*name*'s certificate
        (plain text only to a node in insecure mode)."""
        tls = self.tls(role, name)
        if tls is None:
            return grpc.insecure_channel(self.address, options=list(options))
        return grpc.secure_channel(self.address, channel_credentials(tls), options=list(options))

    def client(self, role: str = ADMIN, name: str | None = None, **kw: Any) -> CoordinatorClient:
        """A ``CoordinatorClient`` of the node presenting *role*/*name*'s certificate."""
        return CoordinatorClient(self.address, tls=self.tls(role, name), **kw)

    def env(self, role: str = ADMIN, name: str | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
        """*base* with ``HSM_TLS_*`` naming *role*/*name*'s files (hsmctl, hsm-bridge, agentd)."""
        return tls_env(self.tls(role, name), base)

    def args(self, role: str = ADMIN, name: str | None = None) -> list[str]:
        """``--tls-*`` naming *role*/*name*'s files (hsmctl, agentd)."""
        return tls_args(self.tls(role, name))

    def call(self, fn: Any, *args: Any) -> Any:
        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def stop(self) -> None:
        if self.loop.is_closed():
            return  # stopped already (by the test)
        asyncio.run_coroutine_threadsafe(self.node.stop(0.5), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


#: Raft timings for tests on loopback (a single replica elects itself at once)
FAST_RAFT = RaftTuning(heartbeat=0.02, election_min=0.1, election_max=0.2, leader_fallback=1.0,
                       connection_timeout=1.0, connection_retry=0.2, tick=0.01, fsync=True)


def single_replica_config(data_dir: Any, shards: int = 1, api_port: int | None = None, cluster_id: str = "",
                          ca: SessionCa | None = None, **overrides: Any) -> NodeConfig:
    """A one-replica cluster (real Raft, real journal) on free loopback
    ports, serving *ca*'s replica certificate (mutual TLS); plain text
    without *ca* (insecure mode) unless *overrides* name ``tls``."""
    api = api_port or free_ports(1)
    raft0 = free_ports(shards)
    cluster = ClusterSpec("test", shards, (ReplicaSpec(REPLICA_ID, f"127.0.0.1:{api}", f"127.0.0.1:{raft0}"),),
                          "test-password-0123456789", id=cluster_id)
    base = NodeConfig(cluster=cluster, replica_id=REPLICA_ID, data_dir=data_dir, archive_ids=(1, 2, 3),
                      agent_grace=3.0, heartbeat_interval=1.0, raft=FAST_RAFT, propose_timeout=5.0,
                      tls=ca.replica() if ca is not None else None)
    return replace(base, **overrides)


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> SessionCa:
    """The session's CA: it issues the in-process replicas' certificate and the callers'."""
    return SessionCa(tmp_path_factory.mktemp("tls-ca"))


@pytest.fixture
def coordinator_factory(tmp_path_factory: Any, tls_ca: SessionCa) -> Iterator[Any]:
    """Start coordinators with custom settings: ``coordinator_factory(agent_grace=1.0, shards=4)``.
    Mutual TLS with ``tls_ca``'s certificates; ``tls=`` another CA's files
    (the test brings its own clients); ``insecure=True``: plain text, for a
    test of the insecure mode."""
    started: list[RunningCoordinator] = []

    def make(shards: int = 1, api_port: int | None = None, cluster_id: str = "", insecure: bool = False,
             **overrides: Any) -> RunningCoordinator:
        data = tmp_path_factory.mktemp("raft")
        own = "tls" in overrides
        ca = None if insecure or own else tls_ca
        if insecure and own:
            raise ValueError("insecure=True and tls=: keep one")
        rc = RunningCoordinator(single_replica_config(data, shards, api_port, cluster_id, ca, **overrides), ca)
        started.append(rc)
        return rc

    yield make
    for rc in started:
        rc.stop()


@pytest.fixture
def coordinator(coordinator_factory: Any) -> RunningCoordinator:
    """A real one-replica coordinator (Raft included) with archive ids 1, 2, 3
    on 127.0.0.1:<free port>, with mutual TLS (``tls_ca``)."""
    return coordinator_factory()  # type: ignore[no-any-return]
