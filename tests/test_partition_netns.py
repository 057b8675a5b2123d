"""Issue 12 as a system test with real network partitions (Linux network
namespaces, ``tests/netns.py``): an agent cut off from the coordinators'
majority while it copies must not run beside the attempt another agent is
given after the grace period, and the archives must end SUCCEEDED.

The issue, as seen on a cluster: an agent copying 4 archives at 2 MB/s was
cut off from the majority. After the grace period a second agent started
attempt 2 of all 4 while the first was still writing attempt 1; the first
renamed its objects into place, the second failed, the first one's
successes could not be forwarded and were dropped: all 4 actions FAILED
and the files DIRTY, although the 4 objects were complete.

Every process runs in a namespace of its own (3 replicas, agents a and b,
the hsmctl client c), all on one bridge; the cut takes a's port off the
bridge (a black hole: a's sockets stay open and time out, as behind a dead
switch), or moves a and replica r1 to a bridge of their own (a 2/3 split,
the agent on the minority side). Agent a keeps running throughout; b
starts after the cut; the network heals once b had time to take the work.
The runs of every action are read from the agents' logs (``action N/M ...
started`` / ``succeeded`` / ``ended with errno``, timestamped to the
millisecond) and no two runs of one action may overlap in time.

To check that the test sees the defect, ``HSM_NETNS_LEASELESS_AGENTS=1``
runs the agents as agents from before leases (``Leases.welcomed`` patched
to ignore the lease the coordinators grant): the cut-off agent then copies
on past the grace period, and the test must fail with overlapping runs.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentd.movers.posix import object_path
from coordinator import config as cfgmod
from coordinator.cluster import ReplicaSpec
from hsm.fid import Fid
from hsm.simfs import SimFS
from tests.cluster import Pki
from tests.cluster import until as cluster_until
from tests.nemesis.history import Event, Run, overlaps, read_agent_log
from tests.netns import Host, Network, unavailable

pytestmark = pytest.mark.slow

MiB = 1 << 20
FS = "fs1"
API_PORT = 7600
RAFT_PORT = 7700  # shard i: 7700 + i
SHARDS = 3
HEARTBEAT = 1.0
GRACE = 8.0  # agent_grace; the agents' lease: (8 - 1.5) / 2 = 3.25 s
LAPSE = 3 * HEARTBEAT  # a silent agent's session lapses, then its grace period starts
BANDWIDTH = 2 * MiB  # mover.bandwidth_limit "2M", per transfer
FILES = 4
# Long enough that agent a, were it left copying, would still be writing
# when b gets attempt 2 (cut + lapse + grace) and for a few seconds after:
# the overlap the issue describes.
SIZE = int(BANDWIDTH * (LAPSE + GRACE + 5))  # 32 MiB, 16 s per copy
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELED")
ENV = dict(os.environ, GRPC_ENABLE_FORK_SUPPORT="false", HSM_FS="simfs")

# Asks every replica (given as id=address) for its Status: which shards it
# sees led, and which agents have a session on it. Run in the client's
# namespace (the test's own process is outside the network).
PROBE = """
import json, sys, grpc
from hsm.tls import TlsFiles, channel_credentials
from hsm.v1 import coordinator_pb2 as C, coordinator_pb2_grpc as G
creds = channel_credentials(TlsFiles.from_args(None, None, None))  # the admin's, from HSM_TLS_*
out = {}
for arg in sys.argv[1:]:
    rid, addr = arg.split("=", 1)
    try:
        with grpc.secure_channel(addr, creds) as ch:
            s = G.CoordinatorStub(ch).Status(C.StatusRequest(), timeout=1.5)
        out[rid] = {"leaders": [x.leader for x in s.shards],
                    "agents": sorted(a.agent_id for a in s.agents if a.replica)}
    except grpc.RpcError as exc:
        out[rid] = {"error": str(exc.code())}
print(json.dumps(out))
"""

# HSM_NETNS_LEASELESS_AGENTS=1: agentd as it was before leases (see above)
LEASELESS_AGENTD = """
import sys
from agentd import lease
welcomed = lease.Leases.welcomed
lease.Leases.welcomed = lambda self, stream, lease_seconds, hb, now: welcomed(self, stream, 0.0, hb, now)
from agentd.cli import main
sys.exit(main(sys.argv[1:]))
"""
LEASELESS = os.environ.get("HSM_NETNS_LEASELESS_AGENTS", "") not in ("", "0")


#: the checks here run subprocesses in the client's namespace: poll gently
until = functools.partial(cluster_until, interval=0.25)


# ---------------------------------------------------------------------------
# the rig


class PartitionRig:
    """3 replicas, agents a and b, and a client c, each in a namespace of
    *net*; a simfs tree and a posix archive shared by the agents."""

    def __init__(self, net: Network, tmp: Path) -> None:
        self.net, self.tmp = net, tmp
        self.logs = tmp / "logs"
        self.logs.mkdir()
        self.replicas = [net.add_host(f"r{k}") for k in (1, 2, 3)]
        self.a, self.b, self.c = net.add_host("a"), net.add_host("b"), net.add_host("c")
        self.apis = [h.addr(API_PORT) for h in self.replicas]
        specs = [ReplicaSpec(h.name, h.addr(API_PORT), h.addr(RAFT_PORT)) for h in self.replicas]
        raft = {"election_min": 0.4, "election_max": 0.8, "leader_fallback": 1.5, "connection_timeout": 1.0,
                "connection_retry": 0.2, "rebalance_interval": 1.0}
        self.config, _ = cfgmod.init_cluster(
            tmp / "etc", "netns", SHARDS, specs, data_dir=str(tmp / "data"),
            extra={"agent_grace": GRACE, "heartbeat_interval": HEARTBEAT, "propose_timeout": 3.0, "raft": raft},
            tls=True)
        #: the cluster CA and certificates (each replica's names its bridge address)
        self.pki = Pki(tmp / "etc" / "tls")
        #: for the client's processes (probe, hsmctl): the admin's certificate
        self.client_env = self.pki.env(cfgmod.ADMIN_CERT, ENV)
        self.fs = SimFS.create(tmp / "fs", FS)
        self.archive = tmp / "archive"
        self.archive.mkdir()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.t0 = time.time()

    # -- processes ----------------------------------------------------------------

    def _spawn(self, name: str, host: Host, argv: list[str]) -> None:
        with open(self.logs / f"{name}.log", "ab") as log:
            self.procs[name] = self.net.popen(host, argv, stdout=log, stderr=log, env=ENV, start_new_session=True)

    def start_replicas(self) -> None:
        for h in self.replicas:
            self._spawn(h.name, h, [sys.executable, "-m", "coordinator.cli", "run", "--config", str(self.config),
                                    "--replica-id", h.name, "--data-dir", str(self.tmp / "data" / h.name),
                                    "--log-level", "info"])
        until(lambda: self._alive() and all(v.get("leaders") and all(v["leaders"]) for v in self.probe().values()),
              30, lambda: f"every replica to see a leader for every shard: {self.probe()}")

    def start_agent(self, host: Host) -> None:
        conf = {
            "agent_id": host.name,
            "coordinators": self.apis,
            "backend": {"type": "simfs", "root": str(self.fs.root)},
            "mover": {"type": "posix", "archive_root": str(self.archive), "bandwidth_limit": "2M",
                      "chunk_size": "256K"},
            "slots": {"archive": FILES, "restore": 1, "remove": 1},
            "progress_interval": 0.5, "reconnect_min_delay": 0.1, "reconnect_max_delay": 0.5,
        }
        tls = self.pki.issue(host.name, "agent")
        conf["tls"] = {"ca": str(tls.ca), "cert": str(tls.cert), "key": str(tls.key)}
        path = self.tmp / f"{host.name}.yaml"
        path.write_text(yaml.safe_dump(conf))
        agentd = ["-c", LEASELESS_AGENTD] if LEASELESS else ["-m", "agentd.cli"]
        self._spawn(host.name, host, [sys.executable, *agentd, "--config", str(path)])

    def wait_connected(self, agent: str, replicas: list[Host], timeout: float = 20) -> None:
        ids = [h.name for h in replicas]
        until(lambda: self._alive() and all(agent in v.get("agents", []) for r, v in self.probe(ids).items()),
              timeout, lambda: f"agent {agent} to have a session on {ids}: {self.probe(ids)}")

    def _alive(self) -> bool:
        for name, p in self.procs.items():
            if p.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise AssertionError(f"{name} exited with {p.returncode}:\n{tail}")
        return True

    def stop(self) -> None:
        """Agents SIGTERM (a few seconds to drain), then everything SIGKILL."""
        for name, p in self.procs.items():
            if name in ("a", "b") and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for name, p in self.procs.items():
            if name in ("a", "b"):
                try:
                    p.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
            p.wait(10)

    # -- the client's side --------------------------------------------------------

    def probe(self, replicas: list[str] | None = None) -> dict[str, dict[str, Any]]:
        args = [f"{h.name}={h.addr(API_PORT)}" for h in self.replicas if replicas is None or h.name in replicas]
        out = self.net.run(self.c, [sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                           env=self.client_env, timeout=30)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def hsmctl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self.net.run(self.c, [sys.executable, "-m", "hsmctl.cli", "--coordinators", ",".join(self.apis),
                                     "--timeout", "10", *args], capture_output=True, text=True,
                            env=self.client_env, timeout=timeout)

    def hsmctl_json(self, *args: str) -> Any:
        out = self.hsmctl(*args, "--json")
        assert out.returncode in (0, 1), f"hsmctl {' '.join(args)}: exit {out.returncode}: {out.stderr}"
        return json.loads(out.stdout)

    def actions(self, fids: list[Fid]) -> dict[str, dict[str, Any]]:
        """The newest action of each FID, by FID text."""
        want = {str(f) for f in fids}
        out: dict[str, dict[str, Any]] = {}
        for a in self.hsmctl_json("actions", "--all"):
            if a["fid"] in want and (a["fid"] not in out or a["action_id"] > out[a["fid"]]["action_id"]):
                out[a["fid"]] = a
        return out

    # -- files --------------------------------------------------------------------

    def make_file(self, name: str) -> tuple[Path, Fid, bytes]:
        data = os.urandom(SIZE)
        path = self.fs.root / name
        path.write_bytes(data)
        return path, self.fs.fid_of(path), data

    # -- the record -----------------------------------------------------------------

    def runs_and_events(self, ids: set[int]) -> tuple[list[Run], list[Event]]:
        runs: list[Run] = []
        events: list[Event] = []
        for agent in ("a", "b"):
            r, e = read_agent_log(agent, self.logs / f"{agent}.log", ids)
            runs += r
            events += e
        return runs, events

    def timeline(self, ids: set[int], marks: list[Event], t_ref: float) -> str:
        """Every run, then every event (the test's marks included), in
        seconds from *t_ref* (the cut)."""
        runs, events = self.runs_and_events(ids)
        now = time.time()
        lines = ["runs (seconds from the cut):"]
        for r in sorted(runs, key=lambda r: (r.action_id, r.start)):
            end = f"{r.end - t_ref:+7.2f}" if r.end is not None else "  (open)"
            lines.append(f"  action {r.action_id} attempt {r.attempt} on {r.agent}: {r.start - t_ref:+7.2f} .. {end}"
                         f"  {r.outcome}")
        lines.append("events:")
        for e in sorted(events + marks, key=lambda e: e.when):
            lines.append(f"  {e.when - t_ref:+7.2f} {e.agent:>4}  {e.text}")
        lines.append(f"  {now - t_ref:+7.2f} test  timeline read")
        return "\n".join(lines)


@pytest.fixture
def net() -> Iterator[Network]:
    reason = unavailable()
    if reason:
        pytest.skip(f"needs Linux network namespaces: {reason}")
    network = Network()
    try:
        yield network
    finally:
        network.close()


@pytest.fixture
def rig(net: Network, tmp_path: Path) -> Iterator[PartitionRig]:
    r = PartitionRig(net, tmp_path)
    try:
        yield r
    finally:
        r.stop()


# ---------------------------------------------------------------------------
# the test


@pytest.mark.parametrize("split", ["agent-alone", "agent-with-r1"])
def test_agent_cut_off_mid_archive_never_runs_beside_its_replacement(rig: PartitionRig, split: str) -> None:
    """agent-alone: a's port leaves the bridge (a reaches nobody);
    agent-with-r1: a and replica r1 on a bridge of their own, the 2/3
    majority (r2, r3, b, c) on the other."""
    net = rig.net
    marks: list[Event] = []

    def mark(text: str) -> float:
        t = time.time()
        marks.append(Event(t, "test", text))
        return t

    rig.start_replicas()
    mark("replicas ready")
    rig.start_agent(rig.a)
    rig.wait_connected("a", rig.replicas)
    files = [rig.make_file(f"f{k}") for k in range(FILES)]
    fids = [fid for _, fid, _ in files]
    out = rig.hsmctl("archive", *[str(p) for p, _, _ in files])
    assert out.returncode == 0, f"hsmctl archive: {out.stderr}"
    mark(f"{FILES} archives of {SIZE // MiB} MiB submitted")

    def copying_on_a() -> dict[str, dict[str, Any]] | None:
        acts = rig.actions(fids)
        ok = len(acts) == FILES and all(
            x["state"] == "STARTED" and x["agent"] == "a" and x["bytes_done"] > 0 for x in acts.values())
        return acts if ok else None

    acts = until(copying_on_a, 30, lambda: f"all {FILES} archives copying on a: {rig.actions(fids)}")
    ids = {x["action_id"] for x in acts.values()}
    t_cut = time.time()

    def b_took_all() -> bool:
        runs, _ = rig.runs_and_events(ids)
        return len({r.action_id for r in runs if r.agent == "b"}) == FILES

    def settled() -> dict[str, dict[str, Any]] | None:
        acts = rig.actions(fids)
        runs, _ = rig.runs_and_events(ids)
        done = len(acts) == FILES and all(x["state"] in TERMINAL for x in acts.values())
        return acts if done and all(r.end is not None for r in runs) else None

    try:
        # the cut; a keeps running
        if split == "agent-alone":
            net.isolate(rig.a)
            t_cut = mark("cut: a's port taken off the bridge (a reaches nobody)")
            majority = rig.replicas
        else:
            net.partition([rig.a, rig.replicas[0]])
            t_cut = mark("cut: a and r1 on a bridge of their own; r2, r3, b, c on the other")
            majority = rig.replicas[1:]
        rig.start_agent(rig.b)
        rig.wait_connected("b", majority)
        mark("b connected to the majority")

        # Heal once b took all 4 (the grace period is over) and a, had it
        # copied on, would have renamed its objects into place (as in the issue).
        a_would_end = min(r.start for r in rig.runs_and_events(ids)[0] if r.agent == "a") + SIZE / BANDWIDTH + 1
        until(lambda: rig._alive() and b_took_all(), LAPSE + GRACE + 10, "b to start all 4 archives")
        heal_at = max(a_would_end, time.time() + 1)  # and b copying for a second at least
        while time.time() < heal_at:
            rig._alive()
            time.sleep(0.25)
        net.heal()
        t_heal = mark("healed: every host back on br0")
        assert rig.procs["a"].poll() is None, "agent a died during the partition"

        final = until(settled, 2 * SIZE / BANDWIDTH + 15, "every action to end, and every run")
        mark("every action ended")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{report(rig, ids, marks, t_cut, rig.actions(fids), files)}") from None

    runs, _ = rig.runs_and_events(ids)
    problems = overlaps(runs, time.time())
    problems += [f"action {x['action_id']} ended {x['state']} (attempt {x['attempt']} on {x['agent']}, "
                 f"errno {x['errno']}: {x['error']})" for x in final.values() if x["state"] != "SUCCEEDED"]
    states = {s["fid"]: s["states"] for s in rig.hsmctl_json("state", *[str(p) for p, _, _ in files])}
    for path, fid, data in files:
        words = states.get(str(fid), [])
        if "archived" not in words or "dirty" in words:
            problems.append(f"{path.name} is {' '.join(words) or '?'}, not archived and clean")
        obj = object_path(rig.archive, fid)
        if not obj.exists():
            problems.append(f"{path.name}: no archive object {obj}")
        elif obj.read_bytes() != data:
            problems.append(f"{path.name}: archive object differs from the file ({obj.stat().st_size} bytes)")
        left = sorted(p.name for p in obj.parent.glob(obj.name + "_tmp*"))
        if left:
            problems.append(f"{path.name}: temporary objects left beside its archive object: {left}")
    timeline = report(rig, ids, marks, t_cut, final, files) + f"\n(healed at {t_heal - t_cut:+.2f} s)"
    assert not problems, "\n".join(["issue 12 reproduced:", *problems, timeline])
    print(timeline)  # shown with pytest -rP


def report(rig: PartitionRig, ids: set[int], marks: list[Event], t_cut: float,
           final: dict[str, dict[str, Any]], files: list[tuple[Path, Fid, bytes]]) -> str:
    lines = [rig.timeline(ids, marks, t_cut), "final actions:"]
    for x in sorted(final.values(), key=lambda x: x["action_id"]):
        lines.append(f"  {x['action_id']} {x['kind']} {x['state']} agent {x['agent']} attempt {x['attempt']} "
                     f"errno {x['errno']} {x['error']!r} {x['bytes_done']}/{x['bytes_total']}")
    out = rig.hsmctl("state", *[str(p) for p, _, _ in files])
    lines.append("hsmctl state:")
    lines += [f"  {line}" for line in out.stdout.splitlines()]
    lines.append(f"logs: {rig.logs}")
    return "\n".join(lines)
