"""Small numeric helpers (no dependencies)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


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


def outside_cpu_share(d: object) -> float | None:
    """Percent of the host's CPU that processes outside the benchmark used
    during one measurement (its ``cpu`` section), None without one."""
    cpu = d.get("cpu") if isinstance(d, Mapping) else None
    if not isinstance(cpu, Mapping) or not cpu.get("host_capacity_s"):
        return None
    return round(100.0 * float(cpu.get("other_s", 0.0)) / float(cpu["host_capacity_s"]), 1)


def median_to(values: Iterable[Any], digits: int) -> Any:
    """The median of the values that are not None, to *digits* decimals; None if none."""
    v = [x for x in values if x is not None]
    return round(statistics.median(v), digits) if v else None


def median1(values: Iterable[Any]) -> Any:
    """The median of the values that are not None, to one decimal; None if none."""
    return median_to(values, 1)
