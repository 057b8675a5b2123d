"""Per-key token buckets: the request rate limits of one replica (per user
uid, per initiator id). Pure: no clock reads, no I/O; the caller passes
``now`` (monotonic seconds), so a test or a replayed trace decides the same.

Each replica limits what it receives; the integrator scales the rate by the
replica's share of shard leadership and calls ``Buckets.configure`` when
that share (or the policy) changes.

The model, and why each rule:

* A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per
  second. A request needing *n* tokens passes when the bucket holds *n*,
  and then takes them. So in any window of *d* seconds a key gets at most
  ``burst + rate * d`` tokens, the promise the property test checks.
* A key nobody has used is a full bucket, so a full bucket and a missing
  one are the same thing: buckets are created by the first take and may be
  dropped whenever they are full. That is what keeps memory bounded
  (``max_keys``) without refusing anybody who should pass: an evicted full
  bucket comes back full.
* When more than ``max_keys`` buckets would be kept, a full one goes first
  (the one that filled up earliest). Only when every bucket is in debt does
  the least recently touched one go, and that one comes back full: under
  that much key churn the limiter errs towards letting a key through,
  never towards refusing one. A refused take counts as a touch, so a key
  that keeps hammering its empty bucket is the last to be forgotten.
* Time going backwards (a caller that passed an older ``now``) is treated
  as no time passed: each ``Buckets`` keeps the latest time it has seen
  and never computes with an earlier one, so no tokens are minted and
  nothing divides by a negative interval.
* ``retry_after`` is exact for that bucket alone: it is the smallest wait
  (to a few units in the last place, checked in floating point) after
  which the same request passes, if nothing else takes tokens meanwhile.
  Floating point means a grant may come a few ulps early, never a token.

Cost: a take is O(1) (a dict lookup and a move to the dict's end, which
keeps the touch order). Finding the full bucket that filled up earliest
uses a heap of "virtual empty times" (``stamp - tokens / rate``: the time
at which the bucket would have been empty; it only grows when tokens are
taken) with lazy updates: a take does not touch the heap, an eviction
refreshes the stale entries it meets. That is O(log n) amortized per take,
paid only when the limiter is full. ``configure`` settles every bucket at
the latest time seen (O(buckets)): a policy or leadership change, not a
per-request cost.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

#: default bound on the buckets one ``Buckets`` keeps (each a few hundred
#: bytes with its key, dict slot and heap entry)
DEFAULT_MAX_KEYS = 100_000
#: how many steps the retry_after correction may take; it needs one or two
_MAX_NUDGES = 64


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was refused: the first bucket it counts against that
    lacks the tokens, and how long until it would have them."""

    key: str  # the caller's label, e.g. "user 1000" or "initiator oss-3"
    retry_after: float  # seconds until the request could pass (> 0; inf: never, n > burst)
    rate: float
    burst: int


class _Bucket:
    """*tokens* held at *stamp* (refill since then is computed on use);
    *seq* names the bucket's one live heap entry."""

    __slots__ = ("tokens", "stamp", "seq")

    def __init__(self, tokens: float, stamp: float, seq: int) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.seq = seq


def _check_config(rate: float, burst: int) -> None:
    if isinstance(rate, bool) or not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate limit: rate must be a finite number > 0 (tokens per second), not {rate!r}")
    if not (isinstance(burst, int) and not isinstance(burst, bool) and burst >= 1):
        raise ValueError(f"rate limit: burst must be an integer >= 1 (tokens), not {burst!r}")


def _check_n(n: int) -> None:
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 0):
        raise ValueError(f"rate limit: a request needs an integer >= 0 of tokens, not {n!r}")


class Buckets:
    """Token buckets keyed by a hashable key, all with one rate (tokens/s)
    and burst (capacity)."""

    __slots__ = ("_rate", "_burst", "_max_keys", "_buckets", "_heap", "_seq", "_clock")

    def __init__(self, rate: float, burst: int, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        _check_config(rate, burst)
        if not (isinstance(max_keys, int) and not isinstance(max_keys, bool) and max_keys >= 1):
            raise ValueError(f"rate limit: max_keys must be an integer >= 1, not {max_keys!r}")
        self._rate = float(rate)
        self._burst = burst
        self._max_keys = max_keys
        # in touch order: the least recently touched first
        self._buckets: dict[Hashable, _Bucket] = {}
        # (virtual empty time, seq, key): one live entry per bucket, possibly
        # older (lower) than the bucket's current value; dead ones are skipped
        self._heap: list[tuple[float, int, Hashable]] = []
        self._seq = 0
        # the latest time seen: time never goes backwards in here
        self._clock = -math.inf

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> int:
        return self._burst

    @property
    def max_keys(self) -> int:
        return self._max_keys

    def __len__(self) -> int:
        """Buckets kept (in debt, or full and not yet dropped)."""
        return len(self._buckets)

    # -- configuration ---------------------------------------------------------------

    def configure(self, rate: float, burst: int) -> None:
        """A new rate and burst (a policy change, or a change of this
        replica's share of leadership). Every bucket is settled at the
        latest time seen under the old rate and burst, then keeps its
        tokens, clipped to the new burst; a bucket that is full afterwards
        is dropped, as a missing key is a full bucket (so raising the burst
        fills the buckets that were full, and only those)."""
        _check_config(rate, burst)
        rate = float(rate)
        if rate == self._rate and burst == self._burst:
            return
        now = self._clock
        kept: dict[Hashable, _Bucket] = {}
        for key, b in self._buckets.items():
            tokens = min(self._tokens(b, now), float(burst))
            if tokens < burst:
                b.tokens = tokens
                b.stamp = now
                kept[key] = b
        self._rate = rate
        self._burst = burst
        self._buckets = kept
        self._rebuild_heap()

    # -- requests ------------------------------------------------------------------

    def peek(self, key: Hashable, n: int, now: float) -> float:
        """0.0 if *n* tokens are available for *key* at *now*, else the
        seconds until they would be (math.inf when n > burst: never).
        Changes nothing."""
        _check_n(n)
        t = self._time(now)
        if n > self._burst:
            return math.inf
        b = self._buckets.get(key)
        if b is None or n == 0:
            return 0.0
        return self._wait(b, n, t)

    def take(self, key: Hashable, n: int, now: float) -> float:
        """Like ``peek``, and takes the *n* tokens when it returns 0.0;
        takes nothing otherwise (a refusal still counts as a touch of an
        existing bucket, for eviction)."""
        _check_n(n)
        t = self._advance(now)
        b = self._buckets.get(key)
        if n > self._burst:
            if b is not None:
                self._buckets[key] = self._buckets.pop(key)
            return math.inf
        if n == 0:
            return 0.0
        if b is None:
            self._seq += 1
            b = _Bucket(float(self._burst - n), t, self._seq)
            self._buckets[key] = b
            heapq.heappush(self._heap, (self._empty_at(b), b.seq, key))
            if len(self._buckets) > self._max_keys:
                self._evict(t)
            return 0.0
        wait = self._wait(b, n, t)
        if wait == 0.0:
            b.tokens = self._tokens(b, t) - n
            b.stamp = t
        self._buckets[key] = self._buckets.pop(key)
        return wait

    # -- internals -----------------------------------------------------------------

    def _time(self, now: float) -> float:
        if not math.isfinite(now):
            raise ValueError(f"rate limit: now must be a finite time in seconds, not {now!r}")
        return now if now > self._clock else self._clock

    def _advance(self, now: float) -> float:
        t = self._time(now)
        self._clock = t
        return t

    def _tokens(self, b: _Bucket, t: float) -> float:
        """Tokens *b* holds at *t* (t >= b.stamp: the clock never goes back)."""
        return min(float(self._burst), b.tokens + (t - b.stamp) * self._rate)

    def _empty_at(self, b: _Bucket) -> float:
        """When *b* would have been empty, refilling at the current rate:
        the heap's order (the earliest one is the first to be full)."""
        return b.stamp - b.tokens / self._rate

    def _wait(self, b: _Bucket, n: int, t: float) -> float:
        """0.0 if *b* holds *n* (<= burst) tokens at *t*, else the smallest
        wait w (as computed in floating point) with ``t + w`` passing."""
        have = self._tokens(b, t)
        if have >= n:
            return 0.0
        w = (n - have) / self._rate
        for _ in range(_MAX_NUDGES):
            if w > 0.0 and self._tokens(b, t + w) >= n:
                return w
            # the estimate was short by rounding: the next representable time
            w = max(math.nextafter(t + w, math.inf) - t, math.nextafter(w, math.inf))
        while self._tokens(b, t + w) < n:  # not reached in practice; still never short
            w *= 2.0
        return w

    def _rebuild_heap(self) -> None:
        self._heap = [(self._empty_at(b), b.seq, key) for key, b in self._buckets.items()]
        heapq.heapify(self._heap)

    def _evict(self, t: float) -> None:
        """Drop buckets until at most max_keys are kept: full ones first
        (the earliest to fill up), else the least recently touched."""
        buckets, heap = self._buckets, self._heap
        burst = float(self._burst)
        while len(buckets) > self._max_keys:
            if len(heap) > 2 * len(buckets) + 32:  # too many dead entries
                self._rebuild_heap()
                heap = self._heap
            # bring the earliest live, up-to-date entry to the top
            top: _Bucket | None = None
            while heap:
                empty_at, seq, key = heap[0]
                b = buckets.get(key)
                if b is None or b.seq != seq:
                    heapq.heappop(heap)  # dead: its bucket was dropped
                    continue
                current = self._empty_at(b)
                if current != empty_at:  # tokens were taken since it was pushed
                    heapq.heapreplace(heap, (current, seq, key))
                    continue
                top = b
                break
            if top is not None and self._tokens(top, t) >= burst:
                _, _, key = heapq.heappop(heap)
                del buckets[key]
                continue
            # every bucket is in debt: the least recently touched goes
            del buckets[next(iter(buckets))]

    def check_invariants(self) -> None:
        assert len(self._buckets) <= self._max_keys, "more buckets kept than max_keys"
        live = {seq for _, seq, _ in self._heap}
        for key, b in self._buckets.items():
            assert b.seq in live, f"bucket {key!r} has no heap entry"
            assert b.stamp <= self._clock, f"bucket {key!r} stamped after the clock"
            assert 0.0 <= b.tokens < self._burst, f"bucket {key!r} holds {b.tokens} of {self._burst}"


def admit(requests: Sequence[tuple[Sequence[tuple[Buckets, Hashable, str]], int]],
          now: float) -> list[Refusal | None]:
    """Decide a batch of requests, in order (an earlier request's take
    affects a later one's). Each request is the (buckets, key, label)
    triples it counts against and the tokens it needs; it passes only if
    every one of those buckets has them, and then takes from all of them;
    otherwise it takes from none and gets a Refusal naming the first
    bucket that lacks tokens (so a user with tokens is not charged for a
    request its initiator's bucket refused). A bucket listed twice for one
    request is charged for both. Returns None (passed) or a Refusal, per
    request."""
    out: list[Refusal | None] = []
    for counts, n in requests:
        _check_n(n)
        # (buckets, key) -> (buckets, key, label, tokens), in first-mention order
        needs: dict[tuple[int, Hashable], tuple[Buckets, Hashable, str, int]] = {}
        for buckets, key, label in counts:
            ident = (id(buckets), key)
            seen = needs.get(ident)
            if seen is None:
                needs[ident] = (buckets, key, label, n)
            else:  # listed again: charged again
                needs[ident] = (seen[0], seen[1], seen[2], seen[3] + n)
        refusal: Refusal | None = None
        for buckets, key, label, tokens in needs.values():
            if buckets.peek(key, tokens, now) > 0.0:
                # take refuses the same way, and counts as a touch
                wait = buckets.take(key, tokens, now)
                refusal = Refusal(label, wait, buckets.rate, buckets.burst)
                break
        if refusal is None:
            for buckets, key, _, tokens in needs.values():
                # cannot refuse: each bucket was checked just now, taking
                # from one does not change another, and eviction only fills
                got = buckets.take(key, tokens, now)
                assert got == 0.0, f"rate limit: {key!r} refused after it was checked"
        out.append(refusal)
    return out
