"""Statistics over runs: finite values, mean and sample standard deviation over seeds."""

from __future__ import annotations

import math
import statistics
from typing import Any, Iterable, Optional


def finite(value: Any) -> Optional[float]:
    """``value`` as a float when it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def mean_std(values: Iterable[float]) -> tuple[Optional[float], Optional[float], int]:
    """Mean and sample standard deviation (n - 1); std is None for fewer than two values."""
    values = list(values)
    if not values:
        return None, None, 0
    std = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), std, len(values)
