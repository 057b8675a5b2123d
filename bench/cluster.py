"""A real local cluster for the benchmarks: replica processes started with
``hsm-coordinator run`` from a config written by ``coordinator.config.
init_cluster`` (as ``hsm-coordinator local`` does), and agentd processes
with the ``null`` mover (through ``bench.agent_shim``, which records every
mover run).

Every child runs in its own session (process group); :meth:`BenchCluster.
stop` ends each group, with SIGKILL after a grace period, and runs from
``with BenchCluster(...)`` and from an ``atexit`` hook, so no process is
left behind even when a workload fails half-way.

With ``ClusterOptions.code`` (a ``bench.code.CodeTree``: ``python -m bench
compare``) every process runs that tree's product code instead of the
working tree's: the configuration is written by the tree's own
``init_cluster``, replicas and agents start through ``bench.codeprobe``
(which records the file of every product module they import, in
``<cluster>/code/``), clients get the tree in their parameters
(:meth:`BenchCluster.client_code`); :meth:`BenchCluster.check_code` checks
the records.

With ``ClusterOptions.tls`` (``python -m bench tls``) every connection is
mutual TLS: ``init_cluster(tls=True)`` makes the cluster CA and a
certificate per replica and for ``admin`` in ``etc/tls``; each agent gets
its own ``agent`` certificate (named by its agent id), the client processes
share one ``operator`` certificate (:data:`CLIENT_CERT`), and the harness's
own calls (health, Status, ClusterInfo, the client library) use ``admin``
(:meth:`BenchCluster.channel`, :meth:`BenchCluster.harness_tls`). A code
tree (bench compare) runs plain text: the baseline knows nothing of TLS.

With ``ClusterOptions.metrics`` (``python -m bench metrics``) every replica
runs with ``--metrics-listen`` and every agentd with ``--metrics-listen``,
each on its own free loopback port (:attr:`BenchCluster.metrics_ports`,
:meth:`BenchCluster.metrics_urls`), so the harness can scrape them as
Prometheus would. A code tree runs without: the baseline may know nothing
of metrics. :func:`listening_ports` and :meth:`BenchCluster.
unexpected_listeners` tell which TCP ports a process listens on beyond its
API and Raft ports (with metrics off: none; on: its exporter's).

With ``ClusterOptions.policy`` (YAML sections of a policy document:
``python -m bench policy``) the cluster's policy is set once every replica
is ready and every agent connected, before :meth:`BenchCluster.start`
returns (so before any workload's clock starts): the cluster's first
policy (version 1, from its configuration) with those sections put in
(:func:`merge_policy`: the settings the configuration gave stay, unless the
sections name them), set with ``SetPolicy`` as version 2
(:attr:`BenchCluster.policy_text`, :attr:`BenchCluster.policy_version`).

With ``ClusterOptions.replication`` (``python -m bench scaleout``) each
shard's Raft group lives on that many of the replicas, not on all of them:
``init_cluster(replication=R)`` writes ``cluster.replication`` and the
placement it spreads (coordinator.placement) into the configuration, and
each replica opens only its shards' Raft groups (and listens only on their
Raft ports). :attr:`BenchCluster.placement` is the placement read back from
that configuration, :meth:`BenchCluster.hosted` the shards a replica holds
(every shard without replication), and :meth:`BenchCluster.own_ports`
counts only their Raft ports. A code tree runs without: the baseline may
know nothing of placement.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.code import CodeTree, check_records, read_records, summarize_records, write_config
from bench.cpu import classify_replicas, deltas
from coordinator import config as cfgmod
from coordinator.cluster import ReplicaSpec, free_ports
from hsm.client import state_name
from hsm.simfs import SimFS
from hsm.tls import TlsFiles, channel_credentials
from hsm.v1 import coordinator_pb2 as C
from hsm.v1 import coordinator_pb2_grpc

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, GRPC_ENABLE_FORK_SUPPORT="false", PYTHONPATH=str(REPO))
FSNAME = "simfs"
#: the certificate the client processes share with TLS (role operator: submits and cancels)
CLIENT_CERT, CLIENT_ROLE = "bench-client", "operator"

_LIVE: weakref.WeakSet[BenchCluster] = weakref.WeakSet()


def _stop_all() -> None:
    for c in list(_LIVE):
        with contextlib.suppress(Exception):
            c.stop(grace=2.0)


atexit.register(_stop_all)


def until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll *cond* until it returns something true; TimeoutError after *timeout* s."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (bytes) of a live process, from /proc/<pid>/status."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def listening_ports(pid: int) -> set[int]:
    """The TCP ports a live process listens on (IPv4 and IPv6): its
    sockets' inodes from /proc/<pid>/fd matched against the LISTEN entries
    of /proc/<pid>/net/tcp{,6}; empty if the process is gone."""
    inodes: set[str] = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    except OSError:
        return set()
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                next(f, None)  # the header
                for line in f:
                    fields = line.split()
                    # local address (hex ip:port), state 0A = LISTEN, inode
                    if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return ports


def cmdline(pid: int) -> list[str]:
    """The command line of a live process (empty if it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (0 if gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def host_busy_seconds() -> float:
    """CPU seconds the whole host spent busy (every core), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class CpuWindow:
    """Who used the CPU during a measurement: the cluster's processes, the
    clients (as they report it), this harness, and everything else on the
    host (other_s: another workload on the machine skews the figures).

    Each process's counters are read when the window opens and when it
    stops; a thread polls the shard leaders (ClusterInfo) and the
    processes' counters every *poll* seconds meanwhile, so a replica killed
    in the window counts up to its last sample (call :meth:`sample` just
    before a kill to make that exact) and every replica is classed leader or
    follower by the shards it led (see bench.cpu)."""

    def __init__(self, cluster: BenchCluster, poll: float = 0.5) -> None:
        import resource

        self._resource = resource
        self.cluster = cluster
        self.poll = poll
        self.replicas = sorted(cluster.pids())
        self.agents = sorted(cluster.agent_pids())
        self._lock = threading.Lock()
        self._led: dict[str, Counter[int]] = {}
        self._polls = 0
        self._stubs: dict[str, tuple[grpc.Channel, Any]] = {}
        self._stop = threading.Event()
        self.t0 = time.monotonic()
        self.host0 = host_busy_seconds()
        self.procs0 = cluster.cpu()
        self.last = dict(self.procs0)
        self.self0 = self._self_cpu()
        self._poll_leaders()
        self._thread = threading.Thread(target=self._loop, name="bench-cpu-window", daemon=True)
        self._thread.start()

    def _self_cpu(self) -> float:
        r = self._resource.getrusage(self._resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def sample(self) -> None:
        """Read every live process's CPU counter now (the last value of a
        process that then dies is what it used in the window)."""
        now = self.cluster.cpu()
        with self._lock:
            self.last.update({k: v for k, v in now.items() if v})

    def _poll_leaders(self) -> None:
        for rid in self.cluster.live_replicas():
            try:
                if rid not in self._stubs:
                    ch = self.cluster.channel(self.cluster.spec(rid).api)
                    self._stubs[rid] = (ch, coordinator_pb2_grpc.CoordinatorStub(ch))
                info = self._stubs[rid][1].ClusterInfo(C.ClusterInfoRequest(), timeout=2)
            except grpc.RpcError:
                continue
            with self._lock:
                self._polls += 1
                for sh in info.shards:
                    if sh.leader:
                        self._led.setdefault(sh.leader, Counter())[sh.shard] += 1
            return

    def _loop(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self._poll_leaders()
                self.sample()
            except Exception:  # noqa: BLE001 - a missed poll only makes the figures coarser
                log.debug("cpu window poll failed", exc_info=True)

    def stop(self, clients_s: float = 0.0, clients_n: int = 0) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(5)
        wall = time.monotonic() - self.t0
        host = host_busy_seconds() - self.host0
        now = self.cluster.cpu()
        self._poll_leaders()
        for ch, _ in self._stubs.values():
            ch.close()
        harness = self._self_cpu() - self.self0
        with self._lock:
            procs = deltas(self.procs0, {k: v for k, v in now.items() if v}, self.last)
            led = {rid: sorted(c) for rid, c in self._led.items()}
            mean_led = {rid: round(sum(c.values()) / self._polls, 2) for rid, c in self._led.items()} \
                if self._polls else {}
            polls = self._polls
        gone = sorted(k for k in self.procs0 if not now.get(k) and k in procs)
        cluster = sum(procs.values())
        other = host - cluster - clients_s - harness
        return {"wall_s": round(wall, 2), "host_busy_s": round(host, 2),
                "host_capacity_s": round(wall * (os.cpu_count() or 1), 2),
                "processes_s": {k: round(v, 2) for k, v in procs.items()},
                "cluster_s": round(cluster, 2), "clients_s": round(clients_s, 2), "clients_n": clients_n,
                "harness_s": round(harness, 2), "other_s": round(max(0.0, other), 2),
                "replica_class": classify_replicas(self.replicas, led), "shards_led": led,
                "mean_shards_led": mean_led, "leader_polls": polls, "agents": self.agents,
                "counted_to_last_sample": gone}


class Run(NamedTuple):
    """One mover run, as an agent's shim recorded it."""

    time: float  # unix time the run ended
    action_id: int
    attempt: int
    kind: int
    errno: int
    agent: str
    fid: str = ""  # as the agent got it, e.g. [0x200002400:0x1:0x0] ("" in records of older shims)


@dataclass
class ClusterOptions:
    replicas: int = 3
    shards: int = 8
    agents: int = 2
    slots: str = "archive=1024,restore=1024,remove=256"
    log_level: str = "warning"
    #: ended actions kept per shard (the config key max_terminal)
    max_terminal: int = 100_000
    fsync: bool = True
    encrypt: bool = True
    agent_grace: float = 30.0
    raft: dict[str, Any] = field(default_factory=dict)
    #: seconds each null-mover action takes (0: completes at once, on agentd's loop)
    null_delay: float = 0.0
    #: the code every process runs (None: the working tree, as installed)
    code: CodeTree | None = None
    #: mutual TLS on every connection: replicas, agents, clients and the harness (see the module's doc)
    tls: bool = False
    #: a Prometheus exporter on every replica and agentd, on free loopback ports (see the module's doc)
    metrics: bool = False
    #: policy sections (YAML) set on top of the cluster's first policy once it is up ("": none; see the module's doc)
    policy: str = ""
    #: agentd --tags: the tags every agent serves ("": none; a tagged action goes only to an agent serving its tag)
    agent_tags: str = ""
    #: agentd --mover, and more agentd arguments (python -m bench packing: the posix mover with a
    #: --config file that sets its packing); the shim records the null mover's runs only
    mover: str = "null"
    agent_args: tuple[str, ...] = ()
    #: members of each shard's Raft group (cluster.replication; None: every replica holds every shard; see
    #: the module's doc)
    replication: int | None = None
    #: Raft ports each replica keeps free beyond its shards', for the shards a split adds (bench split)
    raft_room: int = 0
    #: seconds start() waits for each replica to be ready and for the agents to connect to it
    start_timeout: float = 60.0

    def describe(self) -> dict[str, Any]:
        out = {"replicas": self.replicas, "shards": self.shards, "agents": self.agents, "slots": self.slots,
               "mover": self.mover, "null_delay": self.null_delay,
               "log_level": self.log_level,  # replicas and agents
               "max_terminal": self.max_terminal, "fsync": self.fsync, "encrypt": self.encrypt, "raft": dict(self.raft),
               "tls": self.tls, "metrics": self.metrics}
        if self.code is not None:
            out["code"] = {"label": self.code.label, "commit": self.code.commit, "root": str(self.code.root)}
        if self.policy:
            out["policy"] = {"sha256": hashlib.sha256(self.policy.encode()).hexdigest()[:16],
                             "bytes": len(self.policy.encode())}
        if self.agent_tags:
            out["agent_tags"] = self.agent_tags
        if self.replication is not None:  # (absent: every replica holds every shard)
            out["replication"] = self.replication
        if self.raft_room:
            out["raft_room"] = self.raft_room
        return out


class BenchCluster:
    def __init__(self, workdir: Path, options: ClusterOptions) -> None:
        self.dir = workdir
        self.opt = options
        self.logs = workdir / "logs"
        self.fs_root = workdir / "fs"
        self.runs_dir = workdir / "runs"
        self.code_dir = workdir / "code"
        self.specs: list[ReplicaSpec] = []
        self.config_path = workdir / "etc" / "coordinator.yaml"
        self.replicas: dict[str, subprocess.Popen[bytes]] = {}
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.dead: set[str] = set()
        self._credentials: Any = None
        #: replica or agent id -> the loopback port its exporter listens on (ClusterOptions.metrics)
        self.metrics_ports: dict[str, int] = {}
        #: the policy document set from ClusterOptions.policy, and its version (None: none set)
        self.policy_text: str | None = None
        self.policy_version: int | None = None
        #: each shard's Raft group as the configuration places it (ClusterOptions.replication; empty: every
        #: replica holds every shard)
        self.placement: tuple[tuple[str, ...], ...] = ()
        _LIVE.add(self)

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> BenchCluster:
        try:
            self.start(self.opt.start_timeout)
        except BaseException:
            self.stop(grace=2.0)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def addresses(self) -> str:
        return ",".join(s.api for s in self.specs)

    def spec(self, rid: str) -> ReplicaSpec:
        return next(s for s in self.specs if s.id == rid)

    # ------------------------------------------------------------------ TLS

    @property
    def tls_dir(self) -> Path:
        """Where init_cluster(tls=True) writes the CA and the certificates."""
        return self.config_path.parent / "tls"

    def tls_files(self, name: str) -> TlsFiles | None:
        """The CA certificate, certificate and key of *name* (a replica id,
        an agent id, ``admin``, :data:`CLIENT_CERT`); None in plain text."""
        if not self.opt.tls:
            return None
        return TlsFiles(self.tls_dir / "ca.pem", self.tls_dir / f"{name}.pem", self.tls_dir / f"{name}.key")

    @property
    def harness_tls(self) -> TlsFiles | None:
        """What the harness presents (admin: it also sets the control mode)."""
        return self.tls_files(cfgmod.ADMIN_CERT)

    def channel(self, api: str) -> grpc.Channel:
        """A channel from the harness to a replica: mutual TLS with the
        admin certificate when the cluster has TLS, else plain text."""
        files = self.harness_tls
        if files is None:
            return grpc.insecure_channel(api)
        if self._credentials is None:
            self._credentials = channel_credentials(files)
        return grpc.secure_channel(api, self._credentials)

    def _issue(self, name: str, role: str) -> None:
        from coordinator import certs

        if not (self.tls_dir / f"{name}.pem").exists():
            certs.issue(self.tls_dir, name, role)

    def _write_config(self) -> None:
        n, s = self.opt.replicas, self.opt.shards
        api0 = free_ports(n)
        # a block of Raft ports per replica (free_ports never hands a port out twice): 9 x 18 = 162
        # consecutive ports are hard to find in a long test session's fragmented range
        self.specs = [ReplicaSpec(f"r{k + 1}", f"127.0.0.1:{api0 + k}", f"127.0.0.1:{free_ports(s + self.opt.raft_room)}")
                      for k in range(n)]
        raft = {"election_min": 0.5, "election_max": 1.0, "leader_fallback": 2.0, "connection_timeout": 2.0,
                "fsync": self.opt.fsync, "encrypt": self.opt.encrypt, **self.opt.raft}
        extra = {"agent_grace": self.opt.agent_grace, "log_level": self.opt.log_level,
                 "max_terminal": self.opt.max_terminal, "raft": raft}
        if self.opt.code is not None:  # the tree's own init_cluster: it writes what that code reads
            if self.opt.tls:
                raise ValueError("a cluster running a code tree (bench compare) runs plain text: no tls")
            if self.opt.metrics:
                raise ValueError("a cluster running a code tree (bench compare) runs without metrics exporters")
            if self.opt.policy:
                raise ValueError("a cluster running a code tree (bench compare) keeps the policy its configuration gives")
            if self.opt.replication is not None:
                raise ValueError("a cluster running a code tree (bench compare) holds every shard on every replica")
            write_config(self.opt.code, self.config_path.parent, "bench", s,
                         [(r.id, r.api, r.raft) for r in self.specs], str(self.dir / "data"), extra)
            return
        cfgmod.init_cluster(self.config_path.parent, "bench", s, self.specs, data_dir=str(self.dir / "data"),
                            extra=extra, tls=self.opt.tls, replication=self.opt.replication)
        if self.opt.tls:
            self._issue(CLIENT_CERT, CLIENT_ROLE)
        if self.opt.replication is not None:  # the placement the replicas will read
            self.placement = cfgmod.load(self.config_path, {"replica_id": self.specs[0].id})[0].cluster.placement

    def start(self, timeout: float = 60.0) -> None:
        for d in (self.logs, self.runs_dir, self.code_dir):
            d.mkdir(parents=True, exist_ok=True)
        SimFS.create(self.fs_root, FSNAME)
        self._write_config()
        for s in self.specs:
            self.start_replica(s.id)
        self.wait_ready(timeout)
        for i in range(1, self.opt.agents + 1):
            self.start_agent(f"agent{i}")
        self.wait_agents(timeout)
        if self.opt.policy:
            self.set_policy(self.opt.policy, timeout)

    def set_policy(self, sections: str, timeout: float = 60.0) -> int:
        """Set the cluster's policy to its current one with *sections*
        (YAML) put in (:func:`merge_policy`); its version."""
        from hsm.client import CoordinatorClient

        with CoordinatorClient(self.addresses, timeout=timeout, tls=self.harness_tls) as client:
            text = merge_policy(client.get_policy().text, sections)
            version = int(client.set_policy(text).version)
        self.policy_text, self.policy_version = text, version
        return version

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        env, cwd = ENV, REPO
        if self.opt.code is not None:
            env, cwd = self.opt.code.env(ENV), self.dir
        with open(self.logs / f"{name}.log", "ab") as logf:
            return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=env,
                                    start_new_session=True, cwd=str(cwd))

    def _python_m(self, name: str, module: str, also: str = "") -> list[str]:
        """``python -m MODULE``, or with a code tree: through bench.codeprobe,
        which records the code the process runs in code/<name>.json."""
        if self.opt.code is None:
            return [sys.executable, "-m", module]
        return [*self.opt.code.python(), "-m", "bench.codeprobe", *(["--also", also] if also else []),
                str(self.code_dir / f"{name}.json"), module]

    # -------------------------------------------------------------- metrics

    def _metrics_flag(self, name: str) -> list[str]:
        """``--metrics-listen 127.0.0.1:PORT`` for replica or agent *name*
        with ClusterOptions.metrics (the port picked once, kept across a
        restart), else nothing."""
        if not self.opt.metrics:
            return []
        if name not in self.metrics_ports:
            self.metrics_ports[name] = free_ports(1)
        return ["--metrics-listen", f"127.0.0.1:{self.metrics_ports[name]}"]

    def metrics_urls(self) -> dict[str, str]:
        """Replica or agent id -> its exporter's URL (empty without metrics)."""
        return {name: f"http://127.0.0.1:{port}/metrics" for name, port in self.metrics_ports.items()}

    def hosted(self, rid: str) -> list[int]:
        """The shards whose Raft group replica *rid* is a member of, as the
        configuration places them (every shard without replication)."""
        return [k for k in range(self.opt.shards) if not self.placement or rid in self.placement[k]]

    def raft_ports(self, rid: str) -> set[int]:
        """The Raft ports replica *rid* listens on: one per shard it holds."""
        spec = self.spec(rid)
        return {int(spec.raft_addr(k).rsplit(":", 1)[1]) for k in self.hosted(rid)}

    def own_ports(self, name: str) -> set[int]:
        """The ports replica or agent *name* listens on by design, exporter
        aside: a replica's API and Raft ports (one per shard it holds),
        none for an agent."""
        if name not in self.replicas:
            return set()
        return {int(self.spec(name).api.rsplit(":", 1)[1])} | self.raft_ports(name)

    def unexpected_listeners(self) -> dict[str, set[int]]:
        """Per live replica and agent: the TCP ports it listens on beyond
        :meth:`own_ports` (with metrics: its exporter's port; without: none)."""
        return {name: listening_ports(pid) - self.own_ports(name)
                for name, pid in {**self.pids(), **self.agent_pids()}.items()}

    # ----------------------------------------------------------- processes

    def start_replica(self, rid: str) -> None:
        self.dead.discard(rid)
        self.replicas[rid] = self._spawn(rid, [
            *self._python_m(rid, "coordinator.cli"), "run", "--config", str(self.config_path),
            "--replica-id", rid, "--data-dir", str(self.dir / "data" / rid), "--log-level", self.opt.log_level,
            *self._metrics_flag(rid)])

    def start_agent(self, agent_id: str) -> None:
        tls: list[str] = []
        files = self.tls_files(agent_id)
        if files is not None:  # its own certificate: agentd checks that it names its agent id
            self._issue(agent_id, "agent")
            tls = ["--tls-ca", str(files.ca), "--tls-cert", str(files.cert), "--tls-key", str(files.key)]
        self.agents[agent_id] = self._spawn(agent_id, [
            *self._python_m(agent_id, "bench.agent_shim", also="agentd"), str(self.runs_dir / f"{agent_id}.runs"),
            "--coordinators", self.addresses, "--agent-id", agent_id, "--fs-root", str(self.fs_root),
            "--mover", self.opt.mover, "--slots", self.opt.slots, "--log-level", self.opt.log_level.upper(),
            *self.opt.agent_args,
            *(["--null-delay", str(self.opt.null_delay)] if self.opt.null_delay else []), *tls,
            *(["--tags", self.opt.agent_tags] if self.opt.agent_tags else []),
            *self._metrics_flag(agent_id)])

    def check_alive(self) -> None:
        for name, p in {**self.replicas, **self.agents}.items():
            if name in self.dead:
                continue
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with code {p.returncode}; see {self.logs / (name + '.log')}")

    def _health(self, api: str) -> bool:
        with self.channel(api) as ch:
            try:
                resp = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service="hsm.v1.Coordinator"), timeout=1)
            except grpc.RpcError:
                return False
        return resp.status == health_pb2.HealthCheckResponse.SERVING

    def wait_ready(self, timeout: float = 60.0, rids: list[str] | None = None) -> None:
        """Until every live replica reports a leader for every shard."""
        for rid in rids or [s.id for s in self.specs if s.id not in self.dead]:
            api = self.spec(rid).api

            def ok(api: str = api) -> bool:
                self.check_alive()
                return self._health(api)
            until(ok, timeout, f"replica {rid} ready (logs in {self.logs})", 0.1)

    def status(self, rid: str, timeout: float = 10.0) -> C.StatusResponse:
        with self.channel(self.spec(rid).api) as ch:
            return coordinator_pb2_grpc.CoordinatorStub(ch).Status(C.StatusRequest(), timeout=timeout)

    def wait_agents(self, timeout: float = 60.0) -> None:
        """Until every live replica has a live session with every agent."""
        want = set(self.agents)
        for s in self.specs:
            if s.id in self.dead:
                continue

            def ok(rid: str = s.id) -> bool:
                self.check_alive()
                try:
                    st = self.status(rid, 2)
                except grpc.RpcError:
                    return False
                return want <= {a.agent_id for a in st.agents if a.replica}
            until(ok, timeout, f"agents connected to {s.id} (logs in {self.logs})", 0.1)

    def live_replicas(self) -> list[str]:
        return [s.id for s in self.specs if s.id not in self.dead]

    def kill_replica(self, rid: str, sig: int = signal.SIGKILL) -> None:
        p = self.replicas[rid]
        self.dead.add(rid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, sig)
        p.wait(30)

    def _end(self, procs: dict[str, subprocess.Popen[bytes]], grace: float) -> None:
        for p in procs.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for name, p in procs.items():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) did not stop in %.0f s; killing it", name, p.pid, grace)
            # the whole group: a replica forks to write snapshots
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)

    def stop_agents(self, grace: float = 15.0) -> None:
        self._end(self.agents, grace)

    def stop(self, grace: float = 15.0) -> None:
        self._end(self.agents, grace)
        self._end(self.replicas, grace)
        _LIVE.discard(self)

    # ---------------------------------------------------------- measuring

    def pids(self) -> dict[str, int]:
        return {rid: p.pid for rid, p in self.replicas.items() if rid not in self.dead and p.poll() is None}

    def agent_pids(self) -> dict[str, int]:
        return {aid: p.pid for aid, p in self.agents.items() if p.poll() is None}

    def memory(self) -> dict[str, dict[str, int]]:
        """VmRSS / VmHWM per live replica (bytes)."""
        return {rid: proc_status(pid) for rid, pid in self.pids().items()}

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each replica and agent."""
        return {name: cpu_seconds(pid) for name, pid in {**self.pids(), **self.agent_pids()}.items()}

    def leaders(self) -> dict[int, str]:
        """Shard -> leader replica id, as the first live replica sees it."""
        for rid in self.live_replicas():
            try:
                st = self.status(rid, 5)
            except grpc.RpcError:
                continue
            return {s.shard: s.leader for s in st.shards}
        return {}

    def raft_entries(self) -> int | None:
        """Raft entries committed so far, summed over the shards (as the
        first live replica that answers sees them), or None."""
        for rid in self.live_replicas():
            try:
                st = self.status(rid, 5)
            except grpc.RpcError:
                continue
            return sum(s.commit_index for s in st.shards)
        return None

    def counts(self, rid: str | None = None) -> dict[str, int]:
        """Action counts by state name over every shard, from one replica's
        applied state (every shard: the ones it leads and the ones it follows)."""
        for r in [rid] if rid else self.live_replicas():
            try:
                st = self.status(r, 10)
            except grpc.RpcError:
                continue
            out: dict[str, int] = {}
            for c in st.counts:
                key = state_name(c.state)
                out[key] = out.get(key, 0) + c.count
            return out
        raise RuntimeError("no replica answered Status")

    def pending(self, rid: str | None = None) -> int:
        """Non-terminal actions (WAITING + STARTED + CANCELING) in every shard."""
        c = self.counts(rid)
        return c.get("WAITING", 0) + c.get("STARTED", 0) + c.get("CANCELING", 0)

    def runs(self) -> list[Run]:
        """Every mover run recorded so far by the agents' shims, by time."""
        out: list[Run] = []
        for f in sorted(self.runs_dir.glob("*.runs")):
            for line in f.read_text().splitlines():
                parts = line.split()
                if len(parts) in (5, 6):
                    out.append(Run(float(parts[0]), int(parts[1]), int(parts[2]), int(parts[3]), int(parts[4]),
                                   f.stem, parts[5] if len(parts) == 6 else ""))
        out.sort()
        return out

    def client_code(self) -> dict[str, str]:
        """Client parameters that make a client process run this cluster's
        code tree (bench.clients.use_code), recording it in code/."""
        if self.opt.code is None:
            return {}
        return {"code_root": str(self.opt.code.root), "code_dir": str(self.code_dir)}

    def client_params(self) -> dict[str, Any]:
        """What every client process needs besides its work: the code tree
        (:meth:`client_code`) and, with TLS, the files of the clients'
        certificate (``tls``: [ca, cert, key]; bench.clients)."""
        files = self.tls_files(CLIENT_CERT)
        tls = {"tls": [str(files.ca), str(files.cert), str(files.key)]} if files is not None else {}
        return {**self.client_code(), **tls}

    def code_records(self) -> dict[str, dict[str, Any]]:
        return read_records(self.code_dir) if self.code_dir.is_dir() else {}

    def check_code(self) -> tuple[list[str], dict[str, Any]]:
        """Problems with the code this cluster's processes ran (empty: every
        product module came from the cluster's code tree), and a summary of
        the records; nothing to check without a code tree."""
        if self.opt.code is None:
            return [], {}
        records = self.code_records()
        return (check_records(records, self.opt.code, [*self.replicas, *self.agents]),
                summarize_records(records))

    def save_logs(self, dest: Path) -> Path:
        """Copy the processes' logs and the agents' run records to *dest*."""
        dest.mkdir(parents=True, exist_ok=True)
        for src in (self.logs, self.runs_dir, self.code_dir):
            if src.is_dir():
                shutil.copytree(src, dest / src.name, dirs_exist_ok=True)
        return dest


def merge_policy(current: str, sections: str) -> str:
    """A policy document: *current* (a whole document) with each top-level
    section of *sections* (YAML) in place of its own, in *current*'s order
    (new sections at the end)."""
    import yaml

    doc = yaml.safe_load(current) or {}
    extra = yaml.safe_load(sections) or {}
    if not isinstance(doc, dict) or not isinstance(extra, dict):
        raise ValueError("a policy document and its sections are YAML mappings")
    doc.update(extra)
    body: str = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, allow_unicode=True, width=100)
    return "# hsm-coordinator policy, set by the benchmark (bench.cluster.merge_policy)\n" + body


def max_terminal_for(actions: int, shards: int) -> int:
    """Keep every ended action of a run (so its latencies can be read back),
    never fewer than the default 100,000 per shard."""
    return max(100_000, math.ceil(actions * 1.3 / shards) + 1000)
