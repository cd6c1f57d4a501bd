"""How fast accuracy falls as distractors are added: per setting and per distractor curve (grid N, images M,
kind hard or easy), the least-squares slope of exact location against k, fitted to each seed's curve (k = 0
included: it starts both kinds' curves), then the mean over seeds with a Student-t 95% interval; against
vanilla, the per-seed difference of slopes (same seed, same scenes), mean ± 95% CI over seeds.

A slope is change in accuracy per added distractor, on a linear k axis: with k in 0, 1, 3, 7, 15 the largest
counts weigh the most.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from ..evals.distractors.plots import series_of
from .format import md_table
from .runs import Job
from .stats import Estimate, by_direction, mean_ci
from .sweeps import BASELINE

Curve = tuple[int, int, str]  #: (N, M, kind)


def least_squares_slope(xs: Sequence[float], ys: Sequence[float]) -> Optional[float]:
    """The slope of the least-squares line through (xs, ys); None with fewer than two distinct xs."""
    points = [(float(x), float(y)) for x, y in zip(xs, ys) if y is not None]
    if len({x for x, _ in points}) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def job_slopes(job: Job, metric: str = "exact") -> dict[Curve, float]:
    """One run's slope of ``metric`` against k for every distractor curve it measured."""
    slopes = {}
    for curve, line in series_of(job.evals.get("distractors", {}), metric).items():
        ks = sorted(k for k in line if line[k][0] is not None)
        slope = least_squares_slope(ks, [line[k][0] for k in ks])
        if slope is not None:
            slopes[curve] = slope
    return slopes


def slope_estimates(settings: dict[str, list[Job]], metric: str = "exact"
                    ) -> dict[Curve, dict[str, tuple[Estimate, Optional[Estimate]]]]:
    """``{curve: {setting: (slope over seeds, slope minus vanilla's over the seeds both have)}}``; the second is
    None for vanilla itself and where no seed pairs."""
    per_seed = {name: {job.seed: job_slopes(job, metric) for job in jobs} for name, jobs in settings.items()}
    baseline = per_seed.get(BASELINE, {})
    curves = sorted({c for seeds in per_seed.values() for slopes in seeds.values() for c in slopes},
                    key=lambda c: (c[1], c[0], c[2] != "hard"))
    out: dict[Curve, dict[str, tuple[Estimate, Optional[Estimate]]]] = {}
    for curve in curves:
        for name, seeds in per_seed.items():
            estimate = mean_ci([slopes.get(curve) for slopes in seeds.values()])
            if not estimate.n:
                continue
            paired = None
            if name != BASELINE:
                diffs = [slopes[curve] - baseline[seed][curve] for seed, slopes in seeds.items()
                         if curve in slopes and curve in baseline.get(seed, {})]
                paired = mean_ci(diffs) if diffs else None
            out.setdefault(curve, {})[name] = (estimate, paired)
    return out


def _mark(paired: Optional[Estimate]) -> str:
    """▼ falls faster than vanilla, ▲ slower (the 95% CI of the paired difference excludes 0)."""
    if paired is None or paired.low is None:
        return ""
    return " ▼" if paired.high < 0 else " ▲" if paired.low > 0 else ""


def slope_table(settings: dict[str, list[Job]], metric: str = "exact") -> tuple[str, list[dict[str, Any]]]:
    """The slopes as a markdown table and as CSV rows (``key``: ``distractors/N2/M1/hard/slope``)."""
    lines, rows = [], []
    for (grid, images, kind), by_setting in slope_estimates(settings, metric).items():
        for name, (estimate, paired) in by_setting.items():
            start = mean_ci([series_of(j.evals.get("distractors", {}), metric).get((grid, images, kind), {})
                             .get(0, (None,))[0] for j in settings[name]])
            lines.append([f"N{grid}/M{images}/{kind}", name, start.format(), estimate.format(digits=4),
                          "—" if paired is None else paired.format(digits=4) + _mark(paired)])
            rows.append({"metric": f"distractors N{grid}/M{images}/{kind}: slope of {metric} per distractor",
                         "evaluation": "distractors", "key": f"distractors/N{grid}/M{images}/{kind}/slope",
                         "setting": name, "mean": estimate.mean, "ci_low": estimate.low, "ci_high": estimate.high,
                         "n": estimate.n, "diff": None if paired is None else paired.mean,
                         "diff_low": None if paired is None else paired.low,
                         "diff_high": None if paired is None else paired.high, "p_value": None})
    if not lines:
        return "no setting ran the distractor evaluation at two or more counts", rows
    header = ["curve (N, M, kind)", "setting", f"{metric} at k = 0 (a curve at its floor cannot fall)",
              f"slope of {metric} per distractor, mean ± 95% CI over seeds",
              "minus vanilla's slope, paired by seed (▼ falls faster, ▲ slower)"]
    return md_table(header, lines), rows


def slope_findings(rows: list[dict[str, Any]]) -> list[str]:
    """One line per setting: on how many distractor curves its accuracy falls faster or slower than vanilla's
    (the 95% CI of the per-seed difference of slopes excludes 0), from :func:`slope_table`'s rows."""
    out = []
    slopes = [r for r in rows if r["key"].endswith("/slope") and r.get("diff_low") is not None]
    for setting, (found, faster, slower) in by_direction(slopes).items():
        line = (f"{setting}: accuracy falls faster with k than vanilla's on {len(faster)} of {len(found)} distractor "
                f"curves, slower on {len(slower)}")
        if faster or slower:
            gap = max(faster + slower, key=lambda r: abs(r["diff"]))
            curve = gap["key"].removeprefix("distractors/").removesuffix("/slope")
            line += (f"; largest: {curve}, {gap['diff']:+.4f} per distractor [{gap['diff_low']:+.4f}, "
                     f"{gap['diff_high']:+.4f}]")
        out.append(line + ".")
    return out
