"""Small numeric helpers (no dependencies)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], p: float) -> float | None:
    """The p-th percentile (0..100) by nearest rank; None for no values."""
    if not values:
        return None
    s = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(s)))
    return s[min(rank, len(s)) - 1]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


def window_rate(times: Sequence[float], lo: float, hi: float) -> float:
    """Events per second among sorted *times* in [lo, hi)."""
    if hi <= lo:
        return 0.0
    n = sum(1 for t in times if lo <= t < hi)
    return round(n / (hi - lo), 1)
