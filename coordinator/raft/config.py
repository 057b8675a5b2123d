"""Raft tuning and addresses (as pysyncobj's ``config`` holds
``SyncObjConf``): ``RaftTuning``, the timeouts and limits of one shard's
Raft group, checked by ``validate()``; the largest entry pysyncobj sends
in one piece (``_BATCH_BYTES``); the check of a Raft address (one
``host:port``, never every interface: see the security notes in
``coordinator.raft.encryptor``); and ``free_port`` for tests and local
setups.

``RaftShard`` turns a ``RaftTuning`` into pysyncobj's ``SyncObjConf``
(``coordinator.raft.shard``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

#: pysyncobj splits a single entry larger than this into a "transmission",
#: whose chunking is buggy near the boundary: we keep every entry below it.
_BATCH_BYTES = 4 << 20
_ADDR_RE = re.compile(r"(?P<host>[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>\d{1,5})")


@dataclass(frozen=True, slots=True)
class RaftTuning:
    """Timeouts and limits. The defaults suit 3-5 replicas on a LAN."""

    #: leader heartbeat (AppendEntries) period, seconds
    heartbeat: float = 0.1
    #: election timeout range: a follower that hears no leader for a random
    #: time in [election_min, election_max] starts an election
    election_min: float = 1.0
    election_max: float = 2.0
    #: a leader without answers from a majority for this long steps down
    leader_fallback: float = 3.0
    #: a connection silent for this long is considered dead (>= election_max)
    connection_timeout: float = 3.5
    #: reconnect to an unreachable peer this often
    connection_retry: float = 1.0
    #: longest wait of the tick thread for network events
    tick: float = 0.05
    #: log compaction: after this many entries ...
    compaction_min_entries: int = 10_000
    #: ... or this many seconds since the last snapshot ...
    compaction_min_time: float = 300.0
    #: ... or when the entries kept in memory exceed this many bytes
    max_log_bytes: int = 256 << 20
    #: journal segment size before starting a new file
    segment_bytes: int = 64 << 20
    #: group commit: Raft entries in flight at once from this leader
    max_inflight: int = 2
    #: group commit: stop adding proposals to an entry past this size ...
    max_entry_bytes: int = 512 << 10
    #: ... or this many commands
    max_entry_commands: int = 20_000
    #: a single proposal larger than this (encoded) is refused
    max_command_bytes: int = 3 << 20
    #: fdatasync the journal before acknowledging (False: tests/benchmarks only)
    fsync: bool = True
    #: encrypt Raft traffic (Fernet, from the `cryptography` package);
    #: False: messages are authenticated (HMAC-SHA256) but readable
    encrypt: bool = True
    #: how often a leader checks whether to hand leadership to preferred_leader
    rebalance_interval: float = 5.0

    def validate(self) -> None:
        if not 0 < self.heartbeat * 3 < self.election_min < self.election_max:
            raise ValueError(
                "Raft timeouts must satisfy 0 < 3 x heartbeat < election_min < election_max "
                f"(got heartbeat={self.heartbeat}, election_min={self.election_min}, "
                f"election_max={self.election_max})"
            )
        if self.leader_fallback <= self.heartbeat:
            raise ValueError("leader_fallback must be longer than heartbeat")
        if self.connection_timeout < self.election_max:
            raise ValueError("connection_timeout must be >= election_max")
        for name in ("tick", "compaction_min_time", "connection_retry", "rebalance_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("compaction_min_entries", "max_log_bytes", "segment_bytes", "max_inflight",
                     "max_entry_bytes", "max_entry_commands", "max_command_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.compaction_min_entries < 2:
            raise ValueError("compaction_min_entries must be at least 2")
        if self.max_command_bytes > _BATCH_BYTES - (64 << 10):
            raise ValueError(f"max_command_bytes must be below {_BATCH_BYTES - (64 << 10)}")


def _check_addr(addr: str, what: str) -> str:
    if not isinstance(addr, str):
        raise ValueError(f"{what} must be 'host:port', not {type(addr).__name__}")
    if len(addr) > 261:  # a DNS name is at most 253 characters, then ':' and a port
        raise ValueError(f"{what} is {len(addr)} characters long: not 'host:port'")
    m = _ADDR_RE.fullmatch(addr)
    if m is None or not 0 < int(m.group("port")) < 65536:
        raise ValueError(f"{what} {addr!r} is not 'host:port' with a port in 1..65535")
    if m.group("host") in ("0.0.0.0", "[::]", "::"):
        raise ValueError(f"{what} {addr!r}: Raft must bind to one address, not every interface")
    return addr


#: the check a Raft address passes ('host:port', one interface, bounded)
check_addr = _check_addr


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on loopback, below the ephemeral range (for
    tests and local setups that restart a replica on the same port)."""
    from coordinator.cluster import free_ports

    return free_ports(1)
