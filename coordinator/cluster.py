"""The cluster's shape: replicas, their addresses, shard count, ring, Raft
secret. Identical on every replica (written by ``hsm-coordinator init``);
see docs/cluster-config.md."""

from __future__ import annotations

import hashlib
import random
import re
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from coordinator import placement as placing
from hsm.ring import DEFAULT_VNODES

API_PORT = 7600
RAFT_PORT = 7700


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {addr!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    id: str
    api: str  # host:port of the gRPC API
    raft: str  # host:port of shard 0's Raft port; shard i uses port + i

    def raft_addr(self, shard: int) -> str:
        host, port = split_addr(self.raft)
        return f"{host}:{port + shard}"


_CLUSTER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def new_cluster_id() -> str:
    """A fresh cluster id (``hsm-coordinator init`` writes one)."""
    return str(uuid.uuid4())


def check_cluster_id(value: str) -> str:
    if not _CLUSTER_ID_RE.fullmatch(value):
        raise ValueError(f"invalid cluster id {value!r}: 1 to 64 characters from A-Z a-z 0-9 . _ -, "
                         "starting with a letter or digit")
    return value


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    name: str
    shards: int
    replicas: tuple[ReplicaSpec, ...]
    password: str
    vnodes: int = DEFAULT_VNODES
    #: the cluster's identity, carried by every answer (see ``cluster_id``)
    id: str = ""
    #: each shard's Raft group, its preferred leader first (coordinator.placement);
    #: empty: every replica holds every shard
    placement: placing.Placement = ()

    @property
    def cluster_id(self) -> str:
        """``id`` when the configuration gives one; else derived from the
        Raft password, which is random per cluster (configurations written
        before ids existed, or by tools that do not write one)."""
        if self.id:
            return self.id
        digest = hashlib.sha256(b"hsm-coordinator cluster id\0" + self.password.encode()).digest()
        return str(uuid.UUID(bytes=digest[:16]))

    def __post_init__(self) -> None:
        if self.id:
            check_cluster_id(self.id)
        if not 1 <= self.shards <= 999:
            raise ValueError(f"shards must be 1..999, not {self.shards}")
        if not self.replicas:
            raise ValueError("a cluster needs at least one replica")
        ids = [r.id for r in self.replicas]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate replica ids in {ids}")
        for r in self.replicas:
            split_addr(r.api)
        problem = raft_port_problem(self.replicas, self.shards)
        if problem:
            raise ValueError(problem)
        if self.placement:
            wrong = placing.problems(self.placement, ids, self.shards)
            if wrong:
                raise ValueError("placement: " + "; ".join(wrong[:5]) +
                                 (f"; and {len(wrong) - 5} more" if len(wrong) > 5 else ""))

    @property
    def replication(self) -> int:
        """Members of each shard's Raft group."""
        return len(self.placement[0]) if self.placement else len(self.replicas)

    def members(self, shard: int) -> tuple[ReplicaSpec, ...]:
        """The replicas of *shard*'s Raft group, its preferred leader first."""
        if not self.placement:  # every replica, the round-robin preferred leader first
            k = shard % len(self.replicas)
            return self.replicas[k:] + self.replicas[:k]
        return tuple(self.replica(rid) for rid in self.placement[shard])

    def holds(self, replica_id: str, shard: int) -> bool:
        return not self.placement or replica_id in self.placement[shard]

    def hosted(self, replica_id: str) -> list[int]:
        """The shards whose Raft group *replica_id* is a member of."""
        return [s for s in range(self.shards) if self.holds(replica_id, s)]

    def replica(self, replica_id: str) -> ReplicaSpec:
        for r in self.replicas:
            if r.id == replica_id:
                return r
        known = ", ".join(r.id for r in self.replicas)
        raise ValueError(f"replica {replica_id!r} is not in the cluster (replicas: {known})")

    def by_raft_addr(self, shard: int, addr: str | None) -> ReplicaSpec | None:
        if addr is None:
            return None
        for r in self.replicas:
            if r.raft_addr(shard) == addr:
                return r
        return None

    def preferred_leader(self, shard: int) -> ReplicaSpec:
        """The first member of the shard's group; without a placement,
        leaders spread round-robin: shard i prefers replica i mod n."""
        if self.placement:
            return self.replica(self.placement[shard][0])
        return self.replicas[shard % len(self.replicas)]


def raft_port_problem(replicas: Iterable[ReplicaSpec], shards: int) -> str | None:
    """Why *replicas* cannot hold *shards* shards, or None: each replica's
    Raft ports (its Raft port + shard index) must fit below 65536 and meet
    no other replica's (the configuration's check, and a split's)."""
    seen: dict[str, str] = {}
    for r in replicas:
        _host, port = split_addr(r.raft)
        if port + shards - 1 > 65535:
            return f"replica {r.id}: Raft ports {port}..{port + shards - 1} do not fit"
        for k in range(shards):
            addr = r.raft_addr(k)
            if addr in seen:
                return (f"replicas' Raft port ranges overlap: replica {r.id}'s Raft port {addr} for shard {k} is "
                        f"{seen[addr]}'s; give the replicas Raft ports at least {shards} apart")
            seen[addr] = f"{r.id} shard {k}"
    return None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


#: ports free_ports has returned in this process
_handed_out: set[int] = set()


def free_ports(count: int, start: int = 20000) -> int:
    """The first port of *count* consecutive free loopback ports, below the
    kernel's ephemeral range: a replica restarted on the same port must not
    find it taken by some client's outgoing connection meanwhile."""
    end = _ephemeral_low() - count
    if end <= start:
        start, end = 1024, max(1025, end)
    for _ in range(500):
        base = random.randrange(start, end)
        block = range(base, base + count)
        # a port handed out earlier may still be unbound (its replica not
        # started yet): never hand it out twice in one process
        if _handed_out.isdisjoint(block) and all(_port_free(p) for p in block):
            _handed_out.update(block)
            return base
    raise RuntimeError(f"no {count} consecutive free ports found below {end + count}")


def membership_problem(members: Iterable[str], reachable: Iterable[str], addr: str, add: bool) -> str | None:
    """Why adding (or removing) *addr* would leave a Raft group without a
    majority of its members reachable now, or None. *members* is the group
    before the change (the leader included), *reachable* the members that
    answer now (the leader included; *addr* too when it was probed and
    answered). A group without a reachable majority commits nothing, the
    membership change itself included, until enough members come back."""
    after = set(members) | {addr} if add else set(members) - {addr}
    up = len(after & set(reachable))
    need = len(after) // 2 + 1
    if up >= need:
        return None
    return (f"the group would have {len(after)} members with {up} reachable now; it needs {need} to commit "
            "anything (start the new replica first, or bring the others back)")
