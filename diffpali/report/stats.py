"""Statistics over runs: finite values; mean and standard deviation over seeds; means with 95% confidence
intervals; paired comparisons of a variant against a baseline.

- :func:`mean_ci`: the mean over seeds with a Student-t 95% interval (n = 1: no interval).
- :func:`paired_bootstrap`: a variant against a baseline on the same seeds and the same items. Each
  bootstrap replicate resamples the seeds (pairs of runs), then the items within each drawn seed
  (the same item indices for both models), and takes the mean over seeds of the per-seed difference.
  Both sources of variance, training runs and test items, are in the interval. The two-sided p-value
  is twice the share of replicates on the far side of zero (never below 1 / replicates).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

import numpy as np


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


#: Two-sided 97.5% quantiles of Student's t for small degrees of freedom; normal beyond.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t975(dof: int) -> float:
    if dof in _T975:
        return _T975[dof]
    smaller = [d for d in _T975 if d <= dof]
    return _T975[max(smaller)] if dof < 30 else 1.96


@dataclass(frozen=True)
class Estimate:
    """A mean over ``n`` seeds and its 95% interval (None when n < 2)."""

    mean: Optional[float]
    low: Optional[float]
    high: Optional[float]
    n: int

    def format(self, scale: float = 1.0, digits: int = 3) -> str:
        if self.mean is None:
            return "—"
        if self.low is None:
            return f"{self.mean * scale:.{digits}f} (n={self.n})"
        half = (self.high - self.low) / 2 * scale
        return f"{self.mean * scale:.{digits}f} ± {half:.{digits}f} (n={self.n})"


def mean_ci(values: Sequence[Optional[float]], bounds: Optional[tuple[float, float]] = None) -> Estimate:
    """Mean of the non-missing ``values`` with a t-based 95% interval, cut to ``bounds`` when the quantity
    has them (a fraction: (0, 1)) so that no interval claims a value the quantity cannot take."""
    kept = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not kept:
        return Estimate(None, None, None, 0)
    mean = sum(kept) / len(kept)
    if len(kept) < 2:
        return Estimate(mean, None, None, len(kept))
    sd = float(np.std(kept, ddof=1))
    half = t975(len(kept) - 1) * sd / math.sqrt(len(kept))
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(bounds[0], low), min(bounds[1], high)
    return Estimate(mean, low, high, len(kept))


@dataclass(frozen=True)
class Comparison:
    """variant - baseline: the observed mean difference over seeds, its 95% bootstrap interval, the p-value."""

    difference: float
    low: float
    high: float
    p_value: float
    seeds: int
    items: int  #: items per seed (the same for both models)
    replicates: int

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0

    def format(self, scale: float = 1.0, digits: int = 3) -> str:
        verdict = "" if self.significant else ", no significant difference"
        p = format_p(self.p_value, self.replicates)
        interval = f"[{self.low * scale:+.{digits}f}, {self.high * scale:+.{digits}f}]"
        counts = f"(n={self.seeds} seeds x {self.items} items)"
        return f"{self.difference * scale:+.{digits}f} {interval}, {p}{verdict} {counts}"


def format_p(p_value: float, replicates: int) -> str:
    """``p=0.012``, or ``p<0.0005`` where the bootstrap's resolution (1 / replicates) is reached."""
    return f"p<{1 / replicates:.4f}" if p_value <= 1 / replicates else f"p={p_value:.3f}"


def paired_bootstrap(variant: Sequence[Sequence[float]], baseline: Sequence[Sequence[float]],
                     replicates: int = 2000, seed: int = 0) -> Comparison:
    """``variant[s][i]``, ``baseline[s][i]``: the score of item i in seed s (same items, same order).

    Raises ValueError when the runs do not pair (different seed counts or item counts).
    """
    if len(variant) != len(baseline) or not variant:
        raise ValueError(f"paired comparison needs the same seeds: {len(variant)} runs against {len(baseline)}")
    a = [np.asarray(v, dtype=float) for v in variant]
    b = [np.asarray(v, dtype=float) for v in baseline]
    for s, (x, y) in enumerate(zip(a, b)):
        if x.shape != y.shape or x.size == 0:
            raise ValueError(f"seed {s}: {x.size} items against {y.size}; a paired comparison needs the same items")
    diffs = [x - y for x, y in zip(a, b)]
    observed = float(np.mean([d.mean() for d in diffs]))
    rng = np.random.default_rng(seed)
    seeds = len(diffs)
    replicate = np.empty(replicates)
    for r in range(replicates):
        drawn = rng.integers(0, seeds, size=seeds)
        replicate[r] = np.mean([diffs[s][rng.integers(0, diffs[s].size, size=diffs[s].size)].mean() for s in drawn])
    low, high = (float(q) for q in np.quantile(replicate, [0.025, 0.975]))
    far_side = np.mean(replicate <= 0) if observed > 0 else np.mean(replicate >= 0)
    p_value = min(1.0, max(2 * float(far_side), 1 / replicates))
    return Comparison(observed, low, high, p_value, seeds, int(diffs[0].size), replicates)


def by_direction(rows: Iterable[dict[str, Any]]) -> dict[str, tuple[list, list, list]]:
    """Rows with a paired difference (``diff_low``, ``diff_high``: its 95% CI), by ``setting``: (all of them,
    those whose CI lies below 0, those whose CI lies above 0). The findings of every section count these."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["setting"], []).append(row)
    return {setting: (found, [r for r in found if r["diff_high"] < 0], [r for r in found if r["diff_low"] > 0])
            for setting, found in grouped.items()}
