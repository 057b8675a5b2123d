"""Private networks of Linux network namespaces for system tests (and a
future nemesis harness): one namespace per process "host", all joined to
one Linux bridge, so that a test can cut and heal links between real
processes without touching the machine's own network.

Layout::

    <prefix>-hub          a namespace holding only the bridge br0 (and the
                          extra bridges of a partition); no address
    <prefix>-<host>       one per host: lo and eth0, 10.213.0.N/24, the
                          other end of a veth pair whose hub end
                          (p-<host>) is a port of br0

Nothing is created in the root namespace: the veth pairs are made inside
the hub and their host ends moved straight into the host namespaces. The
/24 exists only on those eth0 interfaces, so the processes can reach only
addresses the network created (there is no default route). The file
system is shared, as on hosts mounting the same Lustre and archive.

Faults (all reversible with :meth:`Network.heal`):

* :meth:`Network.isolate`: the hosts' ports leave every bridge. Their
  eth0 stays up with carrier and their routes stay; whatever they send is
  dropped silently and nothing reaches them: a black hole, as a dead
  switch port or a pulled cable beyond the first hop looks to TCP
  (connections are not reset, they time out).
* :meth:`Network.partition`: each group of hosts gets a bridge of its own;
  hosts named in no group stay on br0. Inside a group the hosts still talk.
* :meth:`Network.link_down`: the host's own eth0 goes down: its routes go,
  its sends fail at once (ENETUNREACH), what others send it is dropped.

Needs root and iproute2 (``ip``); no iptables, nft or netem (kernels of
test machines often lack sch_netem). Use :func:`unavailable` to skip.

Usage::

    with Network() as net:
        r1 = net.add_host("r1")
        proc = net.popen(r1, [sys.executable, "-m", "coordinator.cli", "run", ...])
        net.isolate(r1)
        net.heal()
    # every namespace is deleted, and any process left in them killed

Processes are started with ``ip netns exec NS argv...``, which execs argv:
the :class:`subprocess.Popen`'s pid is the process's own.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

#: the bridge every host is a port of while the network is whole
BRIDGE = "br0"
#: default first three octets of the network's /24 (private, and it exists
#: only inside the network's namespaces)
DEFAULT_SUBNET = "10.213.0"


class NetnsError(RuntimeError):
    """An ``ip`` command failed (its command line and stderr are in the message)."""


def unavailable() -> str | None:
    """Why namespaces cannot be used here (a skip reason), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's ip command is not installed"
    probe = f"hsmt-{secrets.token_hex(3)}-probe"
    out = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if out.returncode != 0:
        return f"'ip netns add' failed: {out.stderr.strip() or out.returncode}"
    try:
        out = subprocess.run(["ip", "-n", probe, "link", "add", "br-probe", "type", "bridge"],
                             capture_output=True, text=True)
        if out.returncode != 0:
            return f"cannot create a Linux bridge in a namespace: {out.stderr.strip()}"
        out = subprocess.run(["ip", "-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
                             capture_output=True, text=True)
        if out.returncode != 0:
            return f"cannot create a veth pair in a namespace: {out.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def ip(*args: str) -> str:
    """Run ``ip ARGS``; raises :class:`NetnsError` when it fails."""
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {out.stderr.strip() or f'exit {out.returncode}'}")
    return out.stdout


@dataclass(frozen=True)
class Host:
    """One namespace of the network."""

    name: str  # the test's name for it: r1, a, ...
    netns: str  # the namespace: <prefix>-<name>
    ip: str  # its address on eth0
    port: str  # its veth end in the hub namespace (a bridge port)

    def addr(self, port: int) -> str:
        """``ip:port``."""
        return f"{self.ip}:{port}"


class Network:
    """Namespaces joined by a bridge; see the module documentation.

    *prefix* names every namespace (default ``hsmt-<6 random hex>``, so
    that concurrent runs never share one); *subnet* gives the first three
    octets of the /24; host k (from 0) gets ``subnet.(10 + k)``.
    """

    def __init__(self, prefix: str | None = None, subnet: str = DEFAULT_SUBNET) -> None:
        self.prefix = prefix or f"hsmt-{secrets.token_hex(3)}"
        self.subnet = subnet
        self.hub = f"{self.prefix}-hub"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self._bridges: list[str] = [BRIDGE]
        self._closed = False
        self._add_netns(self.hub)
        ip("-n", self.hub, "link", "set", "lo", "up")
        ip("-n", self.hub, "link", "add", BRIDGE, "type", "bridge")
        ip("-n", self.hub, "link", "set", BRIDGE, "up")

    def __enter__(self) -> Network:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _add_netns(self, name: str) -> None:
        ip("netns", "add", name)
        self._namespaces.append(name)

    # -- building -----------------------------------------------------------------

    def add_host(self, name: str) -> Host:
        """A new namespace ``<prefix>-<name>`` with lo and eth0 up, eth0
        on br0 with the next address of the subnet."""
        if name in self.hosts:
            raise ValueError(f"host {name!r} exists")
        port = f"p-{name}"
        if len(port) > 15:
            raise ValueError(f"host name {name!r} too long (interface names are 15 bytes at most)")
        host = Host(name, f"{self.prefix}-{name}", f"{self.subnet}.{10 + len(self.hosts)}", port)
        self._add_netns(host.netns)
        # both ends made in the hub, the host's end moved (and renamed) at once
        ip("-n", self.hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        ip("-n", self.hub, "link", "set", port, "master", BRIDGE)
        ip("-n", self.hub, "link", "set", port, "up")
        ip("-n", host.netns, "link", "set", "lo", "up")
        ip("-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
        ip("-n", host.netns, "link", "set", "eth0", "up")
        self.hosts[name] = host
        return host

    # -- running --------------------------------------------------------------------

    def argv(self, host: Host, argv: Sequence[str]) -> list[str]:
        """*argv* run inside *host*'s namespace."""
        return ["ip", "netns", "exec", host.netns, *argv]

    def popen(self, host: Host, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start *argv* in *host* (``subprocess.Popen`` keyword arguments)."""
        return subprocess.Popen(self.argv(host, argv), **kwargs)

    def run(self, host: Host, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run *argv* in *host* to its end (``subprocess.run`` keyword arguments)."""
        return subprocess.run(self.argv(host, argv), **kwargs)

    def pids(self, host: Host) -> list[int]:
        """The processes in *host*'s namespace."""
        out = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    # -- faults -----------------------------------------------------------------------

    def isolate(self, *hosts: Host) -> None:
        """Take the hosts' ports out of every bridge: a silent black hole
        (their eth0 stays up; what they send is dropped; nothing reaches them)."""
        for h in hosts:
            ip("-n", self.hub, "link", "set", h.port, "nomaster")

    def partition(self, *groups: Iterable[Host]) -> None:
        """Give each group of hosts a bridge of its own (br1, br2, ...);
        hosts in no group stay on br0. Undo with :meth:`heal`."""
        for k, group in enumerate(groups, start=1):
            bridge = f"br{k}"
            if bridge not in self._bridges:
                ip("-n", self.hub, "link", "add", bridge, "type", "bridge")
                ip("-n", self.hub, "link", "set", bridge, "up")
                self._bridges.append(bridge)
            for h in group:
                ip("-n", self.hub, "link", "set", h.port, "master", bridge)

    def link_down(self, host: Host) -> None:
        """Take *host*'s eth0 down (its sends fail at once: ENETUNREACH)."""
        ip("-n", host.netns, "link", "set", "eth0", "down")

    def link_up(self, host: Host) -> None:
        ip("-n", host.netns, "link", "set", "eth0", "up")

    def heal(self) -> None:
        """Every host back on br0 with eth0 up; the extra bridges deleted."""
        for h in self.hosts.values():
            ip("-n", h.netns, "link", "set", "eth0", "up")
            ip("-n", self.hub, "link", "set", h.port, "master", BRIDGE)
        for bridge in self._bridges[1:]:
            ip("-n", self.hub, "link", "del", bridge)
        del self._bridges[1:]

    def bridge_of(self, host: Host) -> str | None:
        """The bridge *host*'s port is on, or None (isolated)."""
        out = ip("-n", self.hub, "-o", "link", "show", host.port)
        words = out.split()
        return words[words.index("master") + 1] if "master" in words else None

    # -- teardown ---------------------------------------------------------------------

    def close(self, kill_timeout: float = 5.0) -> None:
        """Kill (SIGKILL, by pid) any process still in the network's
        namespaces, then delete them all (the veths go with them). Safe to
        call twice; never raises for a namespace already gone."""
        if self._closed:
            return
        self._closed = True
        left: list[int] = []
        for h in self.hosts.values():
            left += self.pids(h)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + kill_timeout
        while left and time.monotonic() < deadline:
            left = [p for p in left if _alive(p)]
            time.sleep(0.05)
        errors = []
        for ns in reversed(self._namespaces):
            out = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
            if out.returncode != 0 and "No such file" not in out.stderr:
                errors.append(f"{ns}: {out.stderr.strip()}")
        if errors:
            raise NetnsError("could not delete namespaces: " + "; ".join(errors))


def _alive(pid: int) -> bool:
    """Whether *pid* still runs (a zombie does not; it is left for its
    parent, e.g. a Popen, to reap)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")
