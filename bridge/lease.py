"""One active ``hsm-bridge`` per file system, pure: the bridge holds the
coordinator's lease ``bridge:<fsname>`` of every file system it serves
before it registers with the MDT, and stops (unregisters, exits) before the
coordinator could give a lease to another bridge.

The coordinator grants a lease for ``ttl`` seconds from when shard 0's
leader applies the request, on that leader's clock. The keeper counts it
from *before* it asked (``asked_at``, this host's monotonic clock) and
gives up ``margin`` earlier still (clock rates differ a little; replicas'
wall clocks are kept in step by NTP), so its own view of the lease always
ends first. It renews every ``ttl / 3``: two renewals may fail before the
lease is lost.

A bridge takes all its leases or none: while one is held by another bridge
it gives back those it got (two bridges serving overlapping sets of file
systems never block each other half-way) and stands by, asking again when
the other's lease would run out (or every ``ttl / 3``, whichever first).
"""

from __future__ import annotations

from dataclasses import dataclass, field


def lease_name(fsname: str) -> str:
    return f"bridge:{fsname}"


@dataclass(frozen=True, slots=True)
class Ask:
    """Ask for (or renew) the lease *name*; remember ``asked_at``."""

    name: str


@dataclass(frozen=True, slots=True)
class GiveBack:
    name: str


@dataclass(slots=True)
class LeaseKeeper:
    names: tuple[str, ...]
    ttl: float = 15.0
    #: local time before which each lease is surely this bridge's
    valid_until: dict[str, float] = field(default_factory=dict)
    #: name -> local time of the request in flight
    in_flight: dict[str, float] = field(default_factory=dict)
    #: who holds what this bridge waits for, and until when (local time)
    waiting_for: dict[str, tuple[str, float]] = field(default_factory=dict)
    active: bool = False
    _next_ask: float = 0.0

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("a bridge serves at least one file system")
        if not 3.0 <= self.ttl <= 3600.0:
            raise ValueError(f"the lease ttl must be 3-3600 s, not {self.ttl}")
        self.names = tuple(sorted(set(self.names)))

    @property
    def margin(self) -> float:
        return min(2.0, self.ttl / 5)

    @property
    def renew_every(self) -> float:
        return self.ttl / 3

    def due(self, now: float) -> list[Ask]:
        """The requests to make now."""
        if not self.active and now < self._next_ask:
            return []
        out = []
        for name in self.names:
            if name in self.in_flight:
                continue
            held_until = self.valid_until.get(name)
            if held_until is None or held_until - now <= self.ttl - self.margin - self.renew_every:
                self.in_flight[name] = now
                out.append(Ask(name))
        return out

    def next_time(self, now: float) -> float:
        """When ``due`` may have something to ask."""
        if not self.active:
            return max(now, self._next_ask)
        return min(until - (self.ttl - self.margin - self.renew_every) for until in self.valid_until.values())

    def on_answer(self, now: float, name: str, asked_at: float, granted: bool, holder: str,
                  remaining: float) -> list[GiveBack]:
        """The coordinator's answer to the ``Ask`` made at *asked_at*."""
        self.in_flight.pop(name, None)
        if granted:
            self.valid_until[name] = max(self.valid_until.get(name, 0.0), asked_at + self.ttl - self.margin)
            self.waiting_for.pop(name, None)
            if not self.active and all(self.valid_until.get(n, 0.0) > now for n in self.names):
                self.active = True
            return []
        self.waiting_for[name] = (holder, now + remaining)
        if self.active:
            self.valid_until.pop(name, None)  # someone else has it: lost (``lost`` says so)
            return []
        # stand by: give back what was taken, ask again when the holder's time is up
        back = [GiveBack(n) for n in self.names if self.valid_until.pop(n, None) is not None]
        self._next_ask = now + max(0.1, min(remaining + 0.05, self.renew_every))
        return back

    def on_error(self, now: float, name: str) -> None:
        """The request could not be answered (no leader, unreachable): asked
        again at the next ``due``."""
        self.in_flight.pop(name, None)
        if not self.active:
            self._next_ask = now + min(1.0, self.renew_every)

    def lost(self, now: float) -> str | None:
        """Why an active bridge must stop now (None: it still holds them all)."""
        if not self.active:
            return None
        for name in self.names:
            until = self.valid_until.get(name)
            if until is None:
                holder, _ = self.waiting_for.get(name, ("another bridge", 0.0))
                return f"the lease {name} is held by {holder}"
            if now >= until:
                return f"the lease {name} could not be renewed for {self.ttl - self.margin:.0f} s"
        return None
