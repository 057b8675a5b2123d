"""The cluster the nemesis breaks: 3 replicas, 2 agents and the client hosts,
each in a network namespace of a :class:`NemesisNet`, with mutual TLS as in
production (``tests/test_partition_netns.py``'s rig, grown to restarts,
pauses, full disks and a workload that runs throughout).

Everything lives in the run directory ``RUN``::

    RUN/etc/                cluster config, CA and certificates
    RUN/data/r1..r3         each replica's data dir: a tmpfs of its own
                            (mounted here, unmounted on close), so that one
                            replica's disk can be filled without the others'
    RUN/fs/                 the simfs tree every agent and client shares
    RUN/archive/            the posix mover's archive
    RUN/logs/<name>.log     each process's output (a restarted process appends)
    RUN/control/            files the workload and probe obey (pause, stop)
    RUN/probe.jsonl         the probe's tries (tests/nemesis/probe.py)
    RUN/acks.jsonl, RUN/files.jsonl   the workload's records
    RUN/events.jsonl        what the nemesis did, when

Processes are started in sessions of their own (``ip netns exec`` execs
them: the pid is theirs) and signalled as process groups, so that a
replica's forked snapshot writer is paused and killed with it.
:meth:`NemesisRig.close` kills them all, unmounts the tmpfs and leaves the
namespaces to :meth:`NemesisNet.close`; the harness calls both in
``finally`` blocks, Ctrl-C included.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from coordinator import config as cfgmod
from coordinator.cluster import ReplicaSpec
from hsm.simfs import SimFS
from tests.cluster import Pki
from tests.cluster import until as cluster_until
from tests.nemesis.history import Event, Run, read_agent_log
from tests.nemesis.net import NemesisNet
from tests.netns import Host

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
FS = "fs1"
API_PORT = 7600
RAFT_PORT = 7700  # shard i: 7700 + i
SHARDS = 3
HEARTBEAT = 1.0
GRACE = 8.0  # agent_grace; the agents' lease: (8 - 1.5) / 2 = 3.25 s
ELECTION_MAX = 0.8
DISK = "64m"  # each replica's tmpfs
BANDWIDTH = "512K"  # per transfer: a 64 KiB-1 MiB file copies in 0.1-2 s, a 4 MiB one in 8 s
REPLICAS = ("r1", "r2", "r3")
AGENTS = ("a1", "a2")
#: the columns of ``hsmctl actions --json`` a snapshot keeps (the rest,
#: requesters above all, would make snapshots of long runs large)
ACTION_KEYS = ("action_id", "fid", "kind", "state", "agent", "attempt", "created", "started", "ended",
               "bytes_done", "bytes_total", "errno", "error", "shard")
ENV = dict(os.environ, GRPC_ENABLE_FORK_SUPPORT="false", HSM_FS="simfs", PYTHONPATH=str(REPO))

#: the rig's checks run subprocesses in the client's namespace: poll gently
until = functools.partial(cluster_until, interval=0.25)


class RigError(RuntimeError):
    """The harness itself cannot go on (not a finding about the product)."""


@dataclass
class Proc:
    """One process the rig runs, and how to start it again."""

    name: str
    host: Host
    argv: list[str]
    popen: subprocess.Popen[bytes] | None = None
    #: not expected to run now: killed (kill9_*) and not restarted yet
    down: bool = False
    paused: bool = False
    #: unix times of the nemesis's SIGKILLs (runs left open end there)
    kills: list[float] = field(default_factory=list)


def fill(disk: Path) -> Path:
    """Fill the file system of *disk* to its last byte; returns the filler."""
    filler = disk / "nemesis-filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 64 << 10, 4096, 1):
            block = b"\0" * size
            for _ in range(1 << 20):  # bounded: 64 MiB in 1 MiB blocks is 64 writes
                try:
                    os.write(fd, block)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return filler


class NemesisRig:
    """See the module documentation. *clients*: how many client hosts run
    a workload (c1, c2, ...); the probe and hsmctl run in c1."""

    def __init__(self, net: NemesisNet, run: Path, seed: int, clients: int = 1) -> None:
        self.net, self.run, self.seed = net, run, seed
        self.logs = run / "logs"
        self.control = run / "control"
        for d in (self.logs, self.control, run / "snapshots"):
            d.mkdir(parents=True, exist_ok=True)
        self.events_file = run / "events.jsonl"
        #: what the nemesis did, as events for the checker's histories
        self.events: list[Event] = []
        self.mounts: list[Path] = []
        self.procs: dict[str, Proc] = {}
        self._probe_offset = 0
        self._probe_records: list[dict[str, Any]] = []
        try:
            self._setup(clients)
        except BaseException:
            self.close()
            raise

    def _setup(self, clients: int) -> None:
        net, run = self.net, self.run
        self.replicas = [net.add_host(r) for r in REPLICAS]
        self.agents = [net.add_host(a) for a in AGENTS]
        self.clients = [net.add_host(f"c{k}") for k in range(1, clients + 1)]
        self.c = self.clients[0]
        self.apis = [h.addr(API_PORT) for h in self.replicas]
        self.replica_args = [f"{h.name}={h.addr(API_PORT)}" for h in self.replicas]
        self.data = run / "data"
        for h in self.replicas:
            self._mount(self.data / h.name)
        specs = [ReplicaSpec(h.name, h.addr(API_PORT), h.addr(RAFT_PORT)) for h in self.replicas]
        raft = {"election_min": 0.4, "election_max": ELECTION_MAX, "leader_fallback": 1.5,
                "connection_timeout": 1.0, "connection_retry": 0.2, "rebalance_interval": 1.0}
        self.config, _ = cfgmod.init_cluster(
            run / "etc", "nemesis", SHARDS, specs, data_dir=str(self.data),
            extra={"agent_grace": GRACE, "heartbeat_interval": HEARTBEAT, "propose_timeout": 3.0, "raft": raft},
            tls=True)
        self.pki = Pki(run / "etc" / "tls")
        #: for the client's processes (workload, probe, hsmctl): the admin's certificate
        self.client_env = self.pki.env(cfgmod.ADMIN_CERT, ENV)
        self.fs = SimFS.create(run / "fs", FS)
        self.archive = run / "archive"
        self.archive.mkdir(exist_ok=True)

    # -- set-up and tear-down --------------------------------------------------------

    def _mount(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK},mode=0700", "tmpfs", str(path)],
                       check=True, capture_output=True, timeout=30)
        self.mounts.append(path)

    def event(self, text: str, when: float | None = None) -> float:
        t = time.time() if when is None else when
        self.events.append(Event(t, "nemesis", text))
        with open(self.events_file, "a") as f:
            f.write(json.dumps({"t": round(t, 3), "text": text}) + "\n")
        return t

    def disk_used(self) -> dict[str, int]:
        """Bytes used on each replica's data tmpfs."""
        out = {}
        for h in self.replicas:
            st = os.statvfs(self.data / h.name)
            out[h.name] = (st.f_blocks - st.f_bfree) * st.f_frsize
        return out

    def close(self, keep_data: bool = False) -> None:
        """Every process killed (stopped ones too), every tmpfs unmounted
        (with *keep_data*, its files copied first to ``RUN/replica-data``,
        as evidence). Safe to call twice; never raises for what is already
        gone."""
        for p in self.procs.values():
            if p.popen is not None and p.popen.poll() is None:
                self._signal(p, signal.SIGKILL)
        for p in self.procs.values():
            if p.popen is not None:
                try:
                    p.popen.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        for path in reversed(self.mounts):
            if keep_data:
                shutil.copytree(path, self.run / "replica-data" / path.name, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("nemesis-filler"))
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)
        self.mounts.clear()

    # -- processes ---------------------------------------------------------------------

    def _spawn(self, p: Proc, env: dict[str, str]) -> None:
        with open(self.logs / f"{p.name}.log", "ab") as log:
            p.popen = self.net.popen(p.host, p.argv, stdout=log, stderr=log, env=env, cwd=REPO,
                                     start_new_session=True)
        p.down = p.paused = False

    def _env(self, name: str) -> dict[str, str]:
        return self.client_env if name.startswith(("c", "probe", "workload")) else ENV

    def start(self, name: str) -> None:
        """Start (or start again) the process *name*."""
        p = self.procs[name]
        if p.popen is not None and p.popen.poll() is None:
            raise RigError(f"{name} is running already")
        self._spawn(p, self._env(name))

    def add_replica(self, h: Host) -> None:
        self.procs[h.name] = Proc(h.name, h, [
            sys.executable, "-m", "coordinator.cli", "run", "--config", str(self.config), "--replica-id", h.name,
            "--data-dir", str(self.data / h.name), "--log-level", "info"])
        self.start(h.name)

    def add_agent(self, h: Host) -> None:
        conf: dict[str, Any] = {
            "agent_id": h.name,
            "coordinators": self.apis,
            "backend": {"type": "simfs", "root": str(self.fs.root)},
            "mover": {"type": "posix", "archive_root": str(self.archive), "bandwidth_limit": BANDWIDTH,
                      "chunk_size": "64K"},
            "slots": {"archive": 4, "restore": 2, "remove": 2},
            "progress_interval": 0.5, "reconnect_min_delay": 0.1, "reconnect_max_delay": 0.5,
        }
        tls = self.pki.issue(h.name, "agent")
        conf["tls"] = {"ca": str(tls.ca), "cert": str(tls.cert), "key": str(tls.key)}
        path = self.run / "etc" / f"{h.name}.yaml"
        path.write_text(yaml.safe_dump(conf))
        self.procs[h.name] = Proc(h.name, h, [sys.executable, "-m", "agentd.cli", "--config", str(path)])
        self.start(h.name)

    def add_probe(self) -> None:
        self.procs["probe"] = Proc("probe", self.c, [
            sys.executable, "-m", "tests.nemesis.probe", "watch", "--out", str(self.run / "probe.jsonl"),
            "--coordinators", ",".join(self.apis), "--shards", str(SHARDS),
            "--pause-file", str(self.control / "probe.pause"), "--stop-file", str(self.control / "probe.stop"),
            *self.replica_args])
        self.start("probe")

    def add_workload(self, host: Host, **options: Any) -> None:
        name = f"workload-{host.name}"
        argv = [sys.executable, "-m", "tests.nemesis.workload", "--run-dir", str(self.run), "--client", host.name,
                "--coordinators", ",".join(self.apis), "--fs-root", str(self.fs.root), "--seed", str(self.seed)]
        for k, v in options.items():
            argv += [f"--{k.replace('_', '-')}", str(v)]
        self.procs[name] = Proc(name, host, argv)
        self.start(name)

    def start_cluster(self, **workload: Any) -> None:
        """Replicas, then agents (once every shard has a leader), the probe
        and the workload (paused: :meth:`resume_workload` lets it go)."""
        for h in self.replicas:
            self.add_replica(h)
        until(lambda: self.check_running() or self.all_led(), 60,
              lambda: f"every replica to see a leader for every shard: {self.status()}")
        for h in self.agents:
            self.add_agent(h)
        until(lambda: self.check_running() or self.agents_connected(), 30,
              lambda: f"agents {AGENTS} to have a session on every replica: {self.status()}")
        self.add_probe()
        self.pause_workload()
        for h in self.clients:
            self.add_workload(h, **workload)
        self.event("cluster up: 3 replicas, 2 agents, probe and workload")

    def all_led(self) -> bool:
        views = self.status()
        return all(v.get("leaders") and all(v["leaders"]) for v in views.values())

    def agents_connected(self) -> bool:
        views = self.status()
        return all(set(AGENTS) <= set(v.get("agents", [])) for v in views.values())

    def _signal(self, p: Proc, sig: int) -> None:
        assert p.popen is not None
        try:
            os.killpg(p.popen.pid, sig)  # its session's group: forked children too
        except ProcessLookupError:
            pass

    def kill(self, name: str) -> float:
        """SIGKILL *name* (its whole process group) and reap it; the time."""
        p = self.procs[name]
        t = time.time()
        self._signal(p, signal.SIGKILL)
        assert p.popen is not None
        p.popen.wait(30)
        p.down, p.paused = True, False
        p.kills.append(t)
        return t

    def pause(self, name: str) -> None:
        self._signal(self.procs[name], signal.SIGSTOP)
        self.procs[name].paused = True

    def resume(self, name: str) -> None:
        self._signal(self.procs[name], signal.SIGCONT)
        self.procs[name].paused = False

    def exited(self) -> list[tuple[str, int, str]]:
        """Processes that ended without the nemesis killing them: (name,
        exit status, the end of its log)."""
        out = []
        for p in self.procs.values():
            if p.popen is not None and not p.down and p.popen.poll() is not None:
                tail = (self.logs / f"{p.name}.log").read_text(errors="replace")[-2500:]
                out.append((p.name, p.popen.returncode, tail))
        return out

    def check_running(self) -> bool:
        """Raise when a process ended on its own (during set-up, where
        nothing should); False otherwise (for ``until`` conditions)."""
        gone = self.exited()
        if gone:
            name, rc, tail = gone[0]
            raise RigError(f"{name} exited with {rc}:\n{tail}")
        return False

    # -- the workload and the probe --------------------------------------------------------

    def pause_workload(self) -> None:
        for h in self.clients:
            (self.control / f"{h.name}.pause").touch()

    def resume_workload(self) -> None:
        for h in self.clients:
            (self.control / f"{h.name}.pause").unlink(missing_ok=True)

    def workload_states(self) -> dict[str, dict[str, Any]]:
        out = {}
        for h in self.clients:
            try:
                out[h.name] = json.loads((self.control / f"{h.name}.state.json").read_text())
            except (OSError, ValueError):
                out[h.name] = {}
        return out

    def workload_idle(self) -> bool:
        """Every workload saw the pause and has no request in flight."""
        return all(s.get("paused") and s.get("inflight") == 0 for s in self.workload_states().values())

    def stop_workload(self, timeout: float) -> None:
        """Ask every workload to stop; wait for them to exit (they first
        retry what is unacknowledged, for *timeout* at most)."""
        (self.control / "stop").touch()
        deadline = time.monotonic() + timeout
        for name, p in self.procs.items():
            if name.startswith("workload") and p.popen is not None:
                try:
                    p.popen.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self._signal(p, signal.SIGKILL)
                    p.popen.wait(10)
                p.down = True

    def pause_probe(self) -> None:
        (self.control / "probe.pause").touch()

    def resume_probe(self) -> None:
        (self.control / "probe.pause").unlink(missing_ok=True)

    def probe_records(self) -> list[dict[str, Any]]:
        """Every try of the probe so far (read on from where the last call stopped)."""
        path = self.run / "probe.jsonl"
        if path.exists():
            with open(path, "rb") as f:
                f.seek(self._probe_offset)
                chunk = f.read()
            end = chunk.rfind(b"\n") + 1  # a line being written is read next time
            for line in chunk[:end].splitlines():
                try:
                    self._probe_records.append(json.loads(line))
                except ValueError:
                    continue
            self._probe_offset += end
        return self._probe_records

    # -- questions, asked from the client's namespace ------------------------------------

    def _client_run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return self.net.run(self.c, [sys.executable, *argv], capture_output=True, text=True, env=self.client_env,
                            cwd=REPO, timeout=timeout)

    def status(self) -> dict[str, dict[str, Any]]:
        """Each replica's view: shard leaders, agents with a session, problems."""
        out = self._client_run(["-m", "tests.nemesis.probe", "status", *self.replica_args], 30)
        if out.returncode != 0:
            raise RigError(f"probe status: exit {out.returncode}: {out.stderr[-2000:]}")
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def leader_counts(self) -> dict[str, int]:
        """How many shards each replica leads, as most replicas see it."""
        views = [v["leaders"] for v in self.status().values() if v.get("leaders")]
        counts = dict.fromkeys(REPLICAS, 0)
        for k in range(SHARDS):
            seen = [v[k] for v in views if len(v) > k and v[k]]
            if seen:
                leader = max(sorted(set(seen)), key=seen.count)
                if leader in counts:
                    counts[leader] += 1
        return counts

    def hsmctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self._client_run(["-m", "hsmctl.cli", "--coordinators", ",".join(self.apis), "--timeout", "15",
                                 *args], timeout)

    def actions(self, include_terminal: bool = True, tries: int = 5) -> list[dict[str, Any]] | None:
        """``hsmctl actions [--all] --json``, rows trimmed to ACTION_KEYS;
        None when no try worked."""
        args = ["actions", "--json"] + (["--all"] if include_terminal else [])
        for _ in range(tries):
            out = self.hsmctl(*args)
            if out.returncode == 0:
                return [{k: row.get(k) for k in ACTION_KEYS} for row in json.loads(out.stdout)]
            time.sleep(1)
        return None

    def digests(self, tries: int = 30) -> dict[str, Any]:
        """Each replica's [[applied_index, digest] per shard] (None when it
        did not answer), asked until the answering replicas agree on every
        applied index or *tries* run out."""
        out = self._client_run(["-m", "tests.nemesis.probe", "digests", "--tries", str(tries),
                                *self.replica_args], 120)
        if out.returncode != 0:
            raise RigError(f"probe digests: exit {out.returncode}: {out.stderr[-2000:]}")
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    # -- the movers' record --------------------------------------------------------------

    def runs_and_events(self, ids: set[int]) -> tuple[list[Run], list[Event]]:
        """The runs of *ids* in the agents' logs, and their events. A run
        an agent left open when the nemesis SIGKILLed it ends at the kill
        (its copy stopped there; the log cannot say so)."""
        runs: list[Run] = []
        events: list[Event] = []
        for h in self.agents:
            r, e = read_agent_log(h.name, self.logs / f"{h.name}.log", ids)
            kills = sorted(self.procs[h.name].kills) if h.name in self.procs else []
            for run in r:
                if run.end is None:
                    after = [k for k in kills if k >= run.start]
                    if after:
                        run.end, run.outcome = after[0], "killed (SIGKILL by the nemesis)"
            runs += r
            events += e
        return runs, events
