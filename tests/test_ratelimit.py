"""Per-key token buckets (coordinator/ratelimit.py, pure): refill and
burst, the exactness of retry_after, admit's atomicity and order,
configure, time going backwards, the memory bound (eviction never refuses
a key that should pass), and property tests against an exact model: with
dyadic inputs (exact in floating point) the buckets decide exactly as the
model does; with any floats no window of time grants more than
``burst + rate * window``."""

from __future__ import annotations

import math
from collections.abc import Hashable
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.ratelimit import Buckets, Refusal, admit

# -- refill, burst, retry_after ------------------------------------------------------


def test_refill_rate() -> None:
    b = Buckets(rate=2.0, burst=4)
    assert [b.take("u", 1, 0.0) for _ in range(4)] == [0.0] * 4
    assert b.take("u", 1, 0.0) == 0.5  # empty: one token every 0.5 s
    assert b.take("u", 1, 0.25) == 0.25
    assert b.take("u", 1, 0.5) == 0.0
    assert b.take("u", 1, 0.5) == 0.5
    # 1.5 s later: 3 tokens, no more
    assert [b.take("u", 1, 2.0) for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]
    assert b.take("u", 2, 2.0) == 1.0  # two tokens need a second


def test_burst_caps_the_refill() -> None:
    b = Buckets(rate=10.0, burst=3)
    assert b.take("u", 3, 0.0) == 0.0
    # a long idle time refills to the burst, not beyond
    assert [b.take("u", 1, 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take("u", 1, 100.0) == pytest.approx(0.1)
    # a key never seen has a full bucket
    assert b.peek("new", 3, 100.0) == 0.0


def test_keys_are_independent() -> None:
    b = Buckets(rate=1.0, burst=1)
    assert b.take(1000, 1, 0.0) == 0.0
    assert b.take(1000, 1, 0.0) == 1.0
    assert b.take(1001, 1, 0.0) == 0.0
    assert b.take(("initiator", "oss-3"), 1, 0.0) == 0.0


@pytest.mark.parametrize(("rate", "burst", "now"), [
    (3.0, 1, 0.0),
    (3.0, 5, 1 / 3),
    (0.1, 2, 12345.678),
    (7.0, 10, 1e6 + 0.1),
    (1e6, 1, 3.3),
    (1e-3, 3, 1e5),
    (0.7, 4, 86400.0 * 365),
])
def test_retry_after_is_exact(rate: float, burst: int, now: float) -> None:
    """After waiting retry_after the same request passes, and not
    noticeably earlier (a few units in the last place of the time)."""
    b = Buckets(rate=rate, burst=burst)
    assert b.take("u", burst, now) == 0.0
    t = now
    for n in (1, burst, 1):  # the bucket is empty before each
        wait = b.take("u", n, t)
        assert wait > 0.0
        assert wait == pytest.approx(n / rate, rel=1e-6)
        assert b.peek("u", n, t) == wait  # peek and take agree; the refusal took nothing
        earlier = t + wait - 16 * math.ulp(t + wait)
        if earlier > t:
            assert b.peek("u", n, earlier) > 0.0
        t = t + wait
        assert b.take("u", n, t) == 0.0  # exactly then, it passes


def test_n_greater_than_burst_is_never() -> None:
    b = Buckets(rate=5.0, burst=3)
    assert b.peek("u", 4, 0.0) == math.inf
    assert b.take("u", 4, 0.0) == math.inf
    assert len(b) == 0  # nothing created, nothing taken
    assert b.take("u", 3, 0.0) == 0.0
    assert b.take("u", 4, 1e9) == math.inf
    [refusal] = admit([([(b, "u", "user u")], 4)], 1e9)
    assert refusal == Refusal("user u", math.inf, 5.0, 3)


def test_zero_tokens_always_pass_and_create_nothing() -> None:
    b = Buckets(rate=1.0, burst=1)
    assert b.take("u", 0, 0.0) == 0.0
    assert len(b) == 0
    b.take("u", 1, 0.0)
    assert b.take("u", 0, 0.0) == 0.0 and b.peek("u", 0, 0.0) == 0.0


def test_peek_changes_nothing() -> None:
    b = Buckets(rate=1.0, burst=2)
    assert b.peek("u", 2, 0.0) == 0.0
    assert len(b) == 0
    b.take("u", 2, 0.0)
    assert b.peek("u", 1, 10.0) == 0.0
    # peek did not move the clock: a take at 0.5 still sees t=0.5
    assert b.take("u", 1, 0.5) == 0.5


# -- time going backwards -------------------------------------------------------------


def test_time_going_backwards_mints_nothing() -> None:
    b = Buckets(rate=1.0, burst=2)
    assert b.take("u", 2, 10.0) == 0.0
    # an older now is treated as no time passed since 10.0
    assert b.take("u", 1, 5.0) == 1.0
    assert b.peek("u", 1, 0.0) == 1.0
    assert b.take("u", 1, -1e9) == 1.0
    # a key first seen at an older time is stamped at the latest time
    assert b.take("v", 2, 3.0) == 0.0
    assert b.take("v", 1, 10.5) == 0.5
    assert b.take("u", 1, 11.0) == 0.0
    assert b.take("u", 1, 10.0) == 1.0  # 11.0 is the latest now


@pytest.mark.parametrize("now", [math.nan, math.inf, -math.inf])
def test_not_a_time(now: float) -> None:
    b = Buckets(rate=1.0, burst=1)
    with pytest.raises(ValueError, match="now must be a finite time"):
        b.take("u", 1, now)
    with pytest.raises(ValueError, match="now must be a finite time"):
        b.peek("u", 1, now)


# -- validation --------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0, 0.0, -1.0, math.inf, math.nan, -math.inf])
def test_rate_must_be_positive_and_finite(rate: float) -> None:
    with pytest.raises(ValueError, match="rate must be a finite number > 0"):
        Buckets(rate, 1)
    b = Buckets(1.0, 1)
    with pytest.raises(ValueError, match="rate must be a finite number > 0"):
        b.configure(rate, 1)
    assert (b.rate, b.burst) == (1.0, 1)


@pytest.mark.parametrize("burst", [0, -1, 1.5, True])
def test_burst_must_be_an_integer_at_least_one(burst: int) -> None:
    with pytest.raises(ValueError, match="burst must be an integer >= 1"):
        Buckets(1.0, burst)
    with pytest.raises(ValueError, match="burst must be an integer >= 1"):
        Buckets(1.0, 1).configure(1.0, burst)


def test_max_keys_and_n_are_checked() -> None:
    with pytest.raises(ValueError, match="max_keys must be an integer >= 1"):
        Buckets(1.0, 1, max_keys=0)
    b = Buckets(1.0, 1)
    with pytest.raises(ValueError, match="integer >= 0 of tokens"):
        b.take("u", -1, 0.0)
    with pytest.raises(ValueError, match="integer >= 0 of tokens"):
        b.peek("u", -1, 0.0)
    with pytest.raises(ValueError, match="integer >= 0 of tokens"):
        admit([([(b, "u", "user u")], -1)], 0.0)
    assert len(b) == 0


# -- configure --------------------------------------------------------------------------


def test_configure_clips_tokens_to_a_lower_burst() -> None:
    b = Buckets(rate=1.0, burst=10)
    assert b.take("u", 3, 0.0) == 0.0  # 7 left
    b.configure(1.0, 5)
    assert (b.rate, b.burst) == (1.0, 5)
    assert b.peek("u", 6, 0.0) == math.inf  # more than the burst: never
    assert b.take("u", 5, 0.0) == 0.0
    assert b.take("u", 1, 0.0) == 1.0


def test_configure_keeps_tokens_under_a_higher_burst() -> None:
    b = Buckets(rate=1.0, burst=10)
    assert b.take("u", 3, 0.0) == 0.0  # 7 left
    b.configure(1.0, 20)
    assert b.peek("u", 7, 0.0) == 0.0
    assert b.peek("u", 8, 0.0) == 1.0  # not topped up
    assert b.peek("new", 20, 0.0) == 0.0  # a key never seen: full at the new burst
    assert b.take("u", 20, 13.0) == 0.0  # refills to the new burst


def test_configure_settles_at_the_old_rate_up_to_the_latest_time() -> None:
    b = Buckets(rate=1.0, burst=10)
    assert b.take("u", 10, 0.0) == 0.0
    assert b.take("other", 1, 4.0) == 0.0  # the latest time seen: 4.0
    b.configure(2.0, 10)
    # 4 tokens earned at 1/s until 4.0, then 2/s: 6 at 5.0
    assert b.peek("u", 6, 5.0) == 0.0
    assert b.peek("u", 7, 5.0) == 0.5
    # a refusal quotes the new rate
    b.take("u", 6, 5.0)
    [refusal] = admit([([(b, "u", "user u")], 1)], 5.0)
    assert refusal == Refusal("user u", 0.5, 2.0, 10)


def test_configure_drops_buckets_that_are_full() -> None:
    b = Buckets(rate=1.0, burst=10)
    b.take("a", 1, 0.0)
    b.take("b", 5, 0.0)
    b.take("c", 1, 3.0)
    assert len(b) == 3
    b.configure(1.0, 8)  # at 3.0: a has 10 (full), b has 8 (full at 8), c has 9 -> 8
    assert len(b) == 0
    b.configure(1.0, 8)  # unchanged: nothing to do
    assert b.take("a", 8, 3.0) == 0.0


# -- admit: atomicity and order ----------------------------------------------------------------


def test_admit_is_atomic_across_buckets() -> None:
    users = Buckets(rate=1.0, burst=5)
    initiators = Buckets(rate=0.5, burst=1)
    assert initiators.take("oss-3", 1, 0.0) == 0.0
    req = [(users, 1000, "user 1000"), (initiators, "oss-3", "initiator oss-3")]
    assert admit([(req, 1)], 0.0) == [Refusal("initiator oss-3", 2.0, 0.5, 1)]
    assert users.peek(1000, 5, 0.0) == 0.0  # nothing was taken from the user
    assert len(users) == 0
    # after retry_after it passes, and takes from both
    assert admit([(req, 1)], 2.0) == [None]
    assert users.peek(1000, 5, 2.0) == 1.0
    assert initiators.peek("oss-3", 1, 2.0) == 2.0


def test_admit_names_the_first_bucket_that_lacks_tokens() -> None:
    users = Buckets(rate=1.0, burst=1)
    initiators = Buckets(rate=4.0, burst=1)
    users.take(7, 1, 0.0)
    initiators.take("mdt-0", 1, 0.0)
    [r1, r2] = admit([
        ([(users, 7, "user 7"), (initiators, "mdt-0", "initiator mdt-0")], 1),
        ([(initiators, "mdt-0", "initiator mdt-0"), (users, 7, "user 7")], 1),
    ], 0.0)
    assert r1 == Refusal("user 7", 1.0, 1.0, 1)
    assert r2 == Refusal("initiator mdt-0", 0.25, 4.0, 1)


def test_admit_decides_in_order() -> None:
    users = Buckets(rate=1.0, burst=2)
    initiators = Buckets(rate=1.0, burst=10)

    def req(uid: int) -> list[tuple[Buckets, Hashable, str]]:
        return [(users, uid, f"user {uid}"), (initiators, "oss-1", "initiator oss-1")]

    out = admit([(req(1), 1), (req(1), 1), (req(1), 1), (req(2), 2), (req(2), 1)], 0.0)
    assert out == [None, None, Refusal("user 1", 1.0, 1.0, 2), None, Refusal("user 2", 1.0, 1.0, 2)]
    # the initiator was charged for the four that passed, not the refused ones
    assert initiators.peek("oss-1", 6, 0.0) == 0.0
    assert initiators.peek("oss-1", 7, 0.0) == 1.0


def test_a_refused_request_takes_nothing_for_the_next() -> None:
    users = Buckets(rate=1.0, burst=3)
    users.take(1, 1, 0.0)  # 2 left
    out = admit([([(users, 1, "user 1")], 3), ([(users, 1, "user 1")], 2)], 0.0)
    assert out == [Refusal("user 1", 1.0, 1.0, 3), None]


def test_a_bucket_listed_twice_is_charged_twice() -> None:
    users = Buckets(rate=1.0, burst=3)
    twice: list[tuple[Buckets, Hashable, str]] = [(users, 1, "user 1"), (users, 1, "user 1 again")]
    assert admit([(twice, 2)], 0.0) == [Refusal("user 1", math.inf, 1.0, 3)]  # 4 > burst
    assert admit([(twice, 1), (twice, 1)], 0.0) == [None, Refusal("user 1", 1.0, 1.0, 3)]
    assert users.peek(1, 1, 0.0) == 0.0 and users.peek(1, 2, 0.0) == 1.0


def test_admit_is_deterministic() -> None:
    def run() -> list[Refusal | None]:
        users, initiators = Buckets(3.0, 2), Buckets(1.0, 4)
        out: list[Refusal | None] = []
        for i in range(40):
            uid, ini = i % 3, f"oss-{i % 2}"
            out += admit([([(users, uid, f"user {uid}"), (initiators, ini, f"initiator {ini}")], 1 + i % 2)],
                         i * 0.1)
        return out

    first = run()
    assert first == run()
    assert any(r is None for r in first) and any(r is not None for r in first)


def test_admit_empty_batch_and_no_buckets() -> None:
    assert admit([], 0.0) == []
    assert admit([([], 1)], 0.0) == [None]  # counts against nothing: passes


# -- the memory bound ------------------------------------------------------------------------------


def test_memory_is_bounded() -> None:
    b = Buckets(rate=1.0, burst=100, max_keys=10)
    for i in range(1000):
        assert b.take(i, 50, i * 0.001) == 0.0  # a key never seen (or forgotten) is full
        assert len(b) <= 10
        b.check_invariants()


def test_an_evicted_full_bucket_comes_back_full() -> None:
    b = Buckets(rate=1.0, burst=2, max_keys=2)
    assert b.take("a", 2, 0.0) == 0.0
    assert b.take("b", 2, 1.0) == 0.0
    # at 2.5: a is full again (dropped first), b holds 1.5
    assert b.take("c", 1, 2.5) == 0.0
    assert len(b) == 2
    assert b.take("b", 2, 2.5) == 0.5  # b was kept, still in debt
    assert b.take("a", 2, 2.5) == 0.0  # came back full: nobody who should pass is refused
    assert len(b) == 2
    b.check_invariants()


def test_full_buckets_go_before_older_ones_in_debt() -> None:
    """A heavy user who drained its bucket long ago is not forgotten while
    lighter keys touched after it are full: it stays refused."""
    b = Buckets(rate=1.0, burst=100, max_keys=5)
    assert b.take("heavy", 100, 0.0) == 0.0
    for i in range(4):
        assert b.take(f"light{i}", 1, 1.0 + i * 0.1) == 0.0  # full again 1 s later
    for i in range(20):  # new keys while the light ones are full
        assert b.take(f"new{i}", 1, 10.0 + i) == 0.0
        assert len(b) == 5
    assert b.peek("heavy", 100, 30.0) == 70.0  # kept: 30 tokens at 30.0
    b.check_invariants()


def test_eviction_sees_the_tokens_taken_since_a_bucket_was_first_seen() -> None:
    """x first took little (it would have been full early), then drained:
    eviction must judge x by its tokens now, find y full and drop it, not
    conclude that nothing is full and drop the heavy user."""
    b = Buckets(rate=1.0, burst=100, max_keys=3)
    assert b.take("heavy", 100, 0.0) == 0.0
    assert b.take("x", 1, 0.5) == 0.0
    assert b.take("x", 99, 5.0) == 0.0
    assert b.take("y", 1, 6.0) == 0.0  # full again at 7.0
    assert b.take("w", 1, 8.0) == 0.0  # one too many: y goes
    assert b.peek("heavy", 100, 8.0) == 92.0
    assert b.peek("x", 100, 8.0) == 96.0  # 1 token left at 5.0, 4 at 8.0
    b.check_invariants()


def test_when_every_bucket_is_in_debt_the_least_recently_touched_goes() -> None:
    b = Buckets(rate=0.001, burst=1, max_keys=2)
    assert b.take("a", 1, 0.0) == 0.0
    assert b.take("b", 1, 0.0) == 0.0
    assert b.take("a", 1, 1.0) > 0.0  # refused, but a refusal is a touch: a is newer than b
    assert b.take("c", 1, 2.0) == 0.0  # all in debt: b (least recently touched) goes
    assert b.take("b", 1, 3.0) == 0.0  # b comes back full (the limiter errs towards passing)
    assert len(b) == 2
    assert b.peek("c", 1, 3.0) > 0.0  # c is kept: a, by then the least recently touched, made room for b
    b.check_invariants()


def test_eviction_survives_many_rounds_of_stale_heap_entries() -> None:
    """Keys touched over and over leave their heap entries stale; the bound,
    the invariants and the full-first rule hold throughout."""
    b = Buckets(rate=10.0, burst=5, max_keys=60)
    ref = Buckets(rate=10.0, burst=5, max_keys=10**9)
    t = 0.0
    # 40 hot keys (in debt), and a new key every 7 ms, in debt for 0.1 s:
    # about 55 in debt at a time, over 700 keys in all
    for i in range(5000):
        t += 0.001
        key = i % 40 if i % 7 else 1000 + i
        assert b.take(key, 1, t) == ref.take(key, 1, t)
        assert len(b) <= 60
    assert len(ref) > 700
    b.check_invariants()


# -- properties ----------------------------------------------------------------------------------------


class ExactBucket:
    """The model, in exact arithmetic: tokens at a stamp, refilled on use,
    missing = full, the latest time seen used when time goes backwards."""

    def __init__(self, rate: Fraction, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens: Fraction | None = None  # None: full
        self.stamp = Fraction(0)
        self.clock: Fraction | None = None

    def take(self, n: int, now: Fraction) -> Fraction | None:
        """0 (taken), the wait, or None (never: n > burst)."""
        t = now if self.clock is None or now > self.clock else self.clock
        self.clock = t
        if n > self.burst:
            return None
        have = Fraction(self.burst) if self.tokens is None else \
            min(Fraction(self.burst), self.tokens + (t - self.stamp) * self.rate)
        if have >= n:
            if n:
                self.tokens, self.stamp = have - n, t
            return Fraction(0)
        return (n - have) / self.rate


dyadic_times = st.integers(min_value=-64 * 5, max_value=64 * 20).map(lambda k: Fraction(k, 64))


@settings(max_examples=300, deadline=None)
@given(rate_exp=st.integers(min_value=-3, max_value=3), burst=st.integers(min_value=1, max_value=8),
       ops=st.lists(st.tuples(dyadic_times, st.integers(min_value=0, max_value=9)), max_size=60))
def test_decides_exactly_as_the_exact_model(rate_exp: int, burst: int,
                                            ops: list[tuple[Fraction, int]]) -> None:
    """With dyadic rates and times every float operation is exact, so the
    buckets must agree with the exact model on every call, retry_after
    included (time steps may be negative: time going backwards)."""
    rate = Fraction(2) ** rate_exp
    b, model = Buckets(float(rate), burst), ExactBucket(rate, burst)
    t = Fraction(1000)
    for dt, n in ops:
        t += dt
        peeked = b.peek("k", n, float(t))
        got = b.take("k", n, float(t))
        want = model.take(n, t)
        assert got == peeked
        assert got == (math.inf if want is None else float(want)), (t, n)
        assert want is None or Fraction(got) == want


@settings(max_examples=300, deadline=None)
@given(rate=st.floats(min_value=1e-3, max_value=1e4), burst=st.integers(min_value=1, max_value=20),
       start=st.floats(min_value=0.0, max_value=1e7),
       ops=st.lists(st.tuples(st.floats(min_value=-5.0, max_value=5.0),
                              st.integers(min_value=0, max_value=25), st.booleans()), max_size=80))
def test_no_window_grants_more_than_burst_plus_rate_times_its_length(
        rate: float, burst: int, start: float, ops: list[tuple[float, int, bool]]) -> None:
    """Over any sequence of calls (time steps may be negative), the tokens
    granted at (effective) times in any window [t0, t1] are at most
    burst + rate * (t1 - t0), up to floating point's rounding of the
    times; and a refusal's retry_after is exact: waiting it, the same
    request passes."""
    b = Buckets(rate, burst)
    grants: list[tuple[float, int]] = []
    t, clock = start, -math.inf
    for dt, n, retry in ops:
        t += dt
        clock = max(clock, t)  # time going backwards is no time passed
        wait = b.take("k", n, t)
        if wait == 0.0:
            if n:
                grants.append((clock, n))
        elif wait == math.inf:
            assert n > burst
        else:
            assert wait > 0.0 and n <= burst
            if retry:  # wait it out and try again
                t = clock + wait
                clock = t
                assert b.take("k", n, t) == 0.0
                grants.append((t, n))
    for i, (t0, _) in enumerate(grants):
        total = 0
        for t1, n in grants[i:]:
            total += n
            slack = 1e-9 * max(1.0, rate * t1)  # a few ulps of the times, in tokens
            assert total <= burst + rate * (t1 - t0) + slack, (t0, t1, total)


@settings(max_examples=300, deadline=None)
@given(max_keys=st.integers(min_value=1, max_value=4), burst=st.integers(min_value=1, max_value=4),
       ops=st.lists(st.tuples(st.integers(min_value=0, max_value=6),
                              st.sampled_from([0.0, 0.25, 0.5, 1.0, 4.0]),
                              st.integers(min_value=0, max_value=4)), max_size=80))
def test_eviction_is_invisible_while_at_most_max_keys_are_in_debt(
        max_keys: int, burst: int, ops: list[tuple[int, float, int]]) -> None:
    """As long as no more than max_keys keys are in debt, the bounded
    buckets decide exactly as unbounded ones: only full buckets were
    dropped, and a dropped full bucket comes back full."""
    bounded, ref = Buckets(1.0, burst, max_keys=max_keys), Buckets(1.0, burst, max_keys=10**9)
    keys: set[int] = set()
    t = 0.0
    for key, dt, n in ops:
        t += dt
        keys.add(key)
        assert bounded.take(key, n, t) == ref.take(key, n, t)
        assert len(bounded) <= max_keys
        bounded.check_invariants()
        if sum(ref.peek(k, burst, t) > 0.0 for k in keys) > max_keys:
            break  # now a bucket in debt may go: the bounded ones may let a key through early
