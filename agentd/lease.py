"""An agent's lease on the actions it runs (pure: no I/O, time passed in).

Why
---
A coordinator gives an action to another agent only after the agent that
holds it has been out of touch for ``agent_grace`` (or said it stopped).
An agent cut off from the replicas does not know when that happens, so,
without a lease, it goes on copying while the replacement starts: two runs
of one action at once, writing the same object. The lease makes the agent
stop first.

How
---
Every ``token_every`` seconds the agent sends a token on each live stream
(:meth:`Leases.token`), noting when it sent it on its own monotonic clock.
A replica answers with the shards it leads (:meth:`Leases.granted`): every
action of those shards is renewed *from the moment the token was sent*, so
the answer's delay only shortens the lease. An assignment is renewed when
it arrives (:meth:`Leases.assigned`), but not from its arrival: from the
send time of the last message its stream's replica is known to have
received (the Hello, confirmed by the Welcome, or the last token it
answered). A replica gives an action away only ``agent_grace`` after it
last heard from the agent, so that time is safe; the arrival is not: an
assignment that waited in the socket of a frozen agent (SIGSTOP, a VM
paused) while the action was given to another agent must not start when
the agent wakes, and it finds its lease already over. When an action's
last renewal is older than ``duration`` (``Welcome.lease_seconds``: the
coordinator sets it well inside its grace period, less the time a cut-off
leader takes to step down), :meth:`Leases.expired` names it, once: the agent stops it and gives it
back. :meth:`Leases.valid` says whether a result may still be published
(an archive object renamed into place, an action ended at the file system):
never after the lease ended, so a late copy cannot overwrite the object of
the attempt that replaced it.

Tokens are per stream; only the last ``KEEP_TOKENS`` of a stream are
remembered (an answer to an older one is ignored, which is safe: it would
only renew).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hsm.wire import SHARD_ID_MODULUS

#: tokens remembered per stream (unanswered ones beyond this are forgotten)
KEEP_TOKENS = 32


@dataclass(slots=True)
class _Held:
    shard: int
    renewed: float  # the agent's monotonic clock
    expired: bool = False


@dataclass
class Leases:
    """The lease state of one agent. ``duration`` 0 (or less): no lease,
    nothing ever expires (a coordinator that does not grant leases)."""

    duration: float = 0.0
    #: a token at most this often per stream (heartbeat, and duration / 4)
    heartbeat: float = 5.0
    _held: dict[int, _Held] = field(default_factory=dict)
    _tokens: dict[str, dict[int, float]] = field(default_factory=dict)
    _last_token: dict[str, float] = field(default_factory=dict)
    #: per stream: the send time of the last message its replica is known
    #: to have received (what an assignment on it is renewed from)
    _confirmed: dict[str, float] = field(default_factory=dict)
    _next: int = 0

    # -- configuration --------------------------------------------------------

    def welcomed(self, stream: str, lease_seconds: float, heartbeat: float, now: float,
                 hello_sent: float | None = None) -> None:
        """A stream was (re)welcomed: its replica's lease length (the
        shortest any replica gave wins) and heartbeat. A token is due at
        once. *hello_sent*: when the Hello went out (default *now*); the
        Welcome confirms the replica received it then or later."""
        if lease_seconds > 0:
            self.duration = lease_seconds if self.duration <= 0 else min(self.duration, lease_seconds)
        self.heartbeat = heartbeat if heartbeat > 0 else self.heartbeat
        self._tokens[stream] = {}
        self._last_token[stream] = -math.inf
        self._confirmed[stream] = now if hello_sent is None else min(hello_sent, now)

    def lost(self, stream: str) -> None:
        """A stream went down: its unanswered tokens can renew nothing."""
        self._tokens.pop(stream, None)
        self._last_token.pop(stream, None)
        self._confirmed.pop(stream, None)

    @property
    def token_every(self) -> float:
        if self.duration <= 0:
            return self.heartbeat
        return min(self.heartbeat, self.duration / 4)

    # -- tokens -----------------------------------------------------------------

    def due(self, stream: str, now: float) -> float:
        """When the next token is due on *stream* (monotonic; inf: never)."""
        if self.duration <= 0 or stream not in self._last_token:
            return math.inf
        return self._last_token[stream] + self.token_every

    def token(self, stream: str, now: float) -> int:
        """A token to send on *stream* now if one is due, else 0."""
        if now < self.due(stream, now):
            return 0
        self._next += 1
        sent = self._tokens.setdefault(stream, {})
        sent[self._next] = now
        while len(sent) > KEEP_TOKENS:
            del sent[next(iter(sent))]
        self._last_token[stream] = now
        return self._next

    def granted(self, stream: str, token: int, shards: list[int] | tuple[int, ...]) -> int:
        """A replica confirmed *token* for *shards*: renew their actions from
        the token's send time. Returns how many actions were renewed."""
        sent = self._tokens.get(stream, {}).pop(token, None)
        if sent is None:
            return 0
        # any answer (even leading nothing) says the replica heard us after *sent*
        self._confirmed[stream] = max(self._confirmed.get(stream, -math.inf), sent)
        if not shards:
            return 0
        led = set(shards)
        n = 0
        for held in self._held.values():
            if held.shard in led and sent > held.renewed and not held.expired:
                held.renewed = sent
                n += 1
        return n

    # -- actions ----------------------------------------------------------------

    def assigned(self, action_id: int, stream: str, now: float, shard: int | None = None) -> bool:
        """An assignment of *action_id* arrived on *stream* (a new one, a
        newer attempt, or one to run after the attempt being stopped here):
        renewed from the last time *stream*'s replica is known to have
        heard from us, not from now. *shard*: the shard that holds it, when
        not the one its id names (a split moved it): its leader renews it.
        Returns whether its lease is valid now (False: it waited too long on
        its way, and may already have been given to another agent; do not
        start it)."""
        basis = self._confirmed.get(stream, -math.inf)
        held = self._held.get(action_id)
        if held is None:
            held = self._held[action_id] = _Held(action_id % SHARD_ID_MODULUS if shard is None else shard, basis)
        elif shard is not None:
            held.shard = shard
        elif basis > held.renewed:
            held.renewed = basis
            held.expired = False
        return self.valid(action_id, now)

    def unheard(self, stream: str, now: float) -> float:
        """Seconds since *stream*'s replica is known to have heard from us (inf: never)."""
        return now - self._confirmed.get(stream, -math.inf)

    def ended(self, action_id: int) -> None:
        """Nothing of *action_id* runs or waits here any more."""
        self._held.pop(action_id, None)

    def expired(self, now: float) -> list[tuple[int, int, float]]:
        """Actions whose lease ended since the last call, as (action id,
        shard, seconds since their last renewal); each is named once."""
        if self.duration <= 0:
            return []
        out = []
        for action_id, held in self._held.items():
            if not held.expired and now - held.renewed >= self.duration:
                held.expired = True
                out.append((action_id, held.shard, now - held.renewed))
        return out

    def valid(self, action_id: int, now: float) -> bool:
        """Whether *action_id* may still publish its result."""
        if self.duration <= 0:
            return True
        held = self._held.get(action_id)
        return held is not None and not held.expired and now - held.renewed < self.duration

    def holding(self) -> int:
        return len(self._held)
