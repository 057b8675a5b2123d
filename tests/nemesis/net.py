"""The nemesis's network: :class:`tests.netns.Network` plus the faults the
harness needs beyond whole-port cuts, and the checks that say which faults
this kernel can make at all.

One-way loss without netem or a packet filter: in the sending host's
namespace the peer's address is given a permanent neighbour entry with a
MAC address nobody on the bridge has. The bridge floods such frames to
every port and every host drops them (not its MAC), so the sender's packets
to that peer vanish while the peer's packets still arrive: the classic
asymmetric partition (a leader whose appends never reach one follower,
whose replies still reach the leader). Deleting the entry heals it; the
next packet resolves the real MAC again by ARP.

Packet loss and delay need ``sch_netem``, which kernels of test machines
often lack (this one does: no netem, no tc classifiers or actions, no
iptables or nft). :meth:`NemesisNet.netem_unavailable` tries it once in a
namespace of the network and gives the reason it cannot be used, which the
report prints.
"""

from __future__ import annotations

import subprocess

from tests.netns import Host, Network, ip

#: a unicast, locally administered MAC address no interface of the network has
BLACKHOLE_MAC = "02:00:00:00:00:01"


class NemesisNet(Network):
    """A :class:`Network` that can also drop one host's packets to another."""

    def __init__(self, prefix: str | None = None, subnet: str = "10.213.0") -> None:
        super().__init__(prefix, subnet)
        #: (sender, peer) pairs whose sender-to-peer packets are dropped
        self.one_way: set[tuple[str, str]] = set()

    def drop_one_way(self, sender: Host, peer: Host) -> None:
        """*sender*'s packets to *peer* go to a MAC address nobody has;
        *peer*'s packets to *sender* still arrive. Undo with :meth:`heal`."""
        ip("-n", sender.netns, "neigh", "replace", peer.ip, "lladdr", BLACKHOLE_MAC, "dev", "eth0",
           "nud", "permanent")
        self.one_way.add((sender.name, peer.name))

    def heal_one_way(self) -> None:
        for sender, peer in sorted(self.one_way):
            subprocess.run(["ip", "-n", self.hosts[sender].netns, "neigh", "del", self.hosts[peer].ip,
                            "dev", "eth0"], capture_output=True, timeout=30)
        self.one_way.clear()

    def heal(self) -> None:
        """Every host back on br0 with eth0 up, every one-way drop undone."""
        self.heal_one_way()
        super().heal()

    def netem_unavailable(self, host: Host) -> str | None:
        """Why ``tc qdisc ... netem`` cannot be used in *host*'s namespace
        (tried and undone at once), or None when it can."""
        try:
            out = subprocess.run(["ip", "netns", "exec", host.netns, "tc", "qdisc", "add", "dev", "eth0", "root",
                                  "netem", "delay", "1ms"], capture_output=True, text=True, timeout=30)
        except FileNotFoundError:
            return "tc (iproute2) is not installed"
        if out.returncode != 0:
            why = out.stderr.strip().splitlines()[0] if out.stderr.strip() else f"exit {out.returncode}"
            return f"tc qdisc netem refused ({why}): the kernel has no sch_netem"
        subprocess.run(["ip", "netns", "exec", host.netns, "tc", "qdisc", "del", "dev", "eth0", "root"],
                       capture_output=True, timeout=30)
        return None
