"""The faults the nemesis injects, one small class each: ``apply()`` breaks
something, ``heal()`` undoes it; the harness holds the fault 5-12 s in
between. Targets are drawn with the run's seeded ``random.Random``, from
what the cluster looks like at that moment (who leads), so a seed replays
the same choices as long as the cluster makes the same ones.

Two kinds cannot be made on every machine, and are then recorded as
skipped with the reason (see :func:`unavailable_kinds`):

* ``netem``: packet loss and delay need the kernel's ``sch_netem``.
* ``clock_jump``: a jump of one agent's wall clock. CLOCK_REALTIME is not
  namespaced: setting it moves the clock of every process on the machine
  (the replicas', the harness's), which is a different fault and breaks the
  timestamps the checker compares; a time namespace (``unshare --time``)
  offsets only CLOCK_MONOTONIC and CLOCK_BOOTTIME, once, when it is
  created; and no libfaketime is installed to fake one process's clock.
"""

from __future__ import annotations

import random
from typing import ClassVar

from tests.nemesis.rig import AGENTS, ELECTION_MAX, REPLICAS, NemesisRig, fill
from tests.netns import Host

CLOCK_JUMP_REASON = (
    "not available here: CLOCK_REALTIME is not namespaced (setting it would move every process's clock, "
    "the replicas' and the checker's), time namespaces only offset CLOCK_MONOTONIC/CLOCK_BOOTTIME at their "
    "creation, and no libfaketime is installed to fake one agent's clock")


class Fault:
    """One fault; *target* and *detail* say what was hit, for the report."""

    kind: ClassVar[str] = ""
    #: how long the fault is held (s), when not the harness's default (5-12)
    hold: ClassVar[tuple[float, float] | None] = None

    def __init__(self, rig: NemesisRig, rng: random.Random) -> None:
        self.rig, self.rng = rig, rng
        self.target = ""
        self.detail = ""

    def apply(self) -> None:
        raise NotImplementedError

    def heal(self) -> None:
        raise NotImplementedError

    def host(self, name: str) -> Host:
        return self.rig.net.hosts[name]

    def leader(self) -> str:
        """The replica leading most shards (ties: the first by name); a
        random one when nobody answers."""
        counts = self.rig.leader_counts()
        best = max(counts.values()) if counts else 0
        if not best:
            return self.rng.choice(REPLICAS)
        return min(r for r, n in counts.items() if n == best)


class _Kill9(Fault):
    """SIGKILL a process drawn from *pool*; started again at the heal."""

    pool: tuple[str, ...] = ()

    def apply(self) -> None:
        self.target = self.rng.choice(self.pool)
        self.rig.kill(self.target)
        self.detail = f"SIGKILL {self.target}; restarted at the heal"

    def heal(self) -> None:
        self.rig.start(self.target)


class Kill9Replica(_Kill9):
    kind = "kill9_replica"
    pool = REPLICAS


class Kill9Agent(_Kill9):
    kind = "kill9_agent"
    pool = AGENTS


class PauseReplica(Fault):
    """SIGSTOP for 5-12 s, far beyond the election timeout (0.8 s): its
    peers elect other leaders; on SIGCONT it finds itself deposed."""

    kind = "pause_replica"

    def apply(self) -> None:
        self.target = self.rng.choice([self.leader(), *REPLICAS])
        self.rig.pause(self.target)
        self.detail = f"SIGSTOP {self.target} (election timeout {ELECTION_MAX} s), SIGCONT at the heal"

    def heal(self) -> None:
        self.rig.resume(self.target)


class PauseAgent(Fault):
    """SIGSTOP an agent mid-copy: past 3 s of silence plus the 8 s grace
    its actions are given to the other agent while it is frozen; on
    SIGCONT its lease has long run out and it must not publish. Held 8-15 s
    so that about half the pauses outlast the grace."""

    kind = "pause_agent"
    hold = (8.0, 15.0)

    def apply(self) -> None:
        self.target = self.rng.choice(AGENTS)
        self.rig.pause(self.target)
        self.detail = f"SIGSTOP {self.target}, SIGCONT at the heal"

    def heal(self) -> None:
        self.rig.resume(self.target)


class IsolateLeader(Fault):
    kind = "isolate_leader"

    def apply(self) -> None:
        self.target = self.leader()
        self.rig.net.isolate(self.host(self.target))
        self.detail = f"{self.target} (leading most shards) off the bridge: a black hole"

    def heal(self) -> None:
        self.rig.net.heal()


class Split(Fault):
    """One replica, with an agent half of the time, on a bridge of their own."""

    kind = "split"

    def apply(self) -> None:
        replica = self.rng.choice(REPLICAS)
        minority = [replica]
        if self.rng.random() < 0.5:
            minority.append(self.rng.choice(AGENTS))
        self.target = "+".join(minority)
        self.rig.net.partition([self.host(n) for n in minority])
        self.detail = f"{' and '.join(minority)} apart from the rest"

    def heal(self) -> None:
        self.rig.net.heal()


class OneWay(Fault):
    """The leader's packets to one follower dropped; the follower's still
    arrive (neighbour entry to a MAC nobody has, see tests/nemesis/net.py)."""

    kind = "one_way"

    def apply(self) -> None:
        leader = self.leader()
        follower = self.rng.choice([r for r in REPLICAS if r != leader])
        self.target = f"{leader}->{follower}"
        self.rig.net.drop_one_way(self.host(leader), self.host(follower))
        self.detail = f"packets from {leader} to {follower} dropped, {follower} to {leader} delivered"

    def heal(self) -> None:
        self.rig.net.heal_one_way()


class FullDisk(Fault):
    """A replica's data tmpfs filled to the last byte; the filler removed
    at the heal. The leader of most shards half of the time."""

    kind = "full_disk"

    def apply(self) -> None:
        self.target = self.leader() if self.rng.random() < 0.5 else self.rng.choice(REPLICAS)
        self.filler = fill(self.rig.data / self.target)
        self.detail = f"{self.target}'s data dir full ({self.filler.stat().st_size >> 10} KiB of filler)"

    def heal(self) -> None:
        self.filler.unlink(missing_ok=True)


KINDS: dict[str, type[Fault]] = {c.kind: c for c in (
    Kill9Replica, Kill9Agent, PauseReplica, PauseAgent, IsolateLeader, Split, OneWay, FullDisk)}
#: kinds the issue asks for that may be missing here (with the reason then)
OPTIONAL = ("netem", "clock_jump")


def unavailable_kinds(rig: NemesisRig) -> dict[str, str]:
    """Kinds this machine cannot make, and why."""
    out = {"clock_jump": CLOCK_JUMP_REASON}
    why = rig.net.netem_unavailable(rig.c)
    # were netem here, loss and delay would be a kind of their own; it is
    # not written, as no machine of this project offers it
    out["netem"] = why or "the kernel offers sch_netem, but the harness has no netem fault yet"
    return out

