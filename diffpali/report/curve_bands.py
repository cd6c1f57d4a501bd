"""The 95% interval of every point of the distractor curves (exact location against k), and which points are
too wide to show a trend.

Convention (named on the figure and above the table): a point's value is the mean over seeds of ``exact``; its
interval is the Wilson score interval of a proportion over N scenes, N the positives scored, each distinct
scene set counted once. A scene set is named by the run's ``evals.distractors.haystack_seed`` (the study draws
every seed its own, so N = seeds x positives per point). Runs that scored the same scenes count them once: a
scene's mean score over those runs varies no more than one score does, so N = the positives of one run keeps the
interval conservative. A run that recorded no scene seed is taken to share its scenes with the others. Seeds of
different accuracy pooled have a smaller variance than one proportion at their mean, so pooling them is
conservative too.

The interval is over scenes, conditional on the trained runs: the variance between training runs is not in it.
Beside it the table gives the Student-t interval over seeds (:func:`~.stats.mean_ci`), which has it.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from ..evals.distractors.plots import POINT
from ..paths import METRICS_FILE
from .format import md_table
from .runs import Job, read_json
from .stats import mean_ci

Z95 = 1.959964  #: the two-sided 95% quantile of the normal distribution
MAX_HALF_WIDTH = 0.08  #: the widest half-width at which a curve point is trusted to show a trend
Curve = tuple[int, int, str]  #: (N, M, kind)


def wilson(p: float, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion ``p`` over ``n`` items (inside [0, 1] by construction)."""
    if n <= 0:
        raise ValueError(f"a Wilson interval needs n > 0 items, got n={n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"a proportion must lie in [0, 1], got p={p}")
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    spread = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return centre - spread, centre + spread


def half_width(p: float, n: int) -> float:
    """Half the width of :func:`wilson`'s interval; the widest, for any n, at p = 0.5."""
    low, high = wilson(p, n)
    return (high - low) / 2


def scenes_needed(limit: float = MAX_HALF_WIDTH) -> int:
    """The fewest scenes whose worst-case (p = 0.5) half-width is at most ``limit``."""
    n = 1
    while half_width(0.5, n) > limit:
        n += 1
    return n


def scene_count(runs: Iterable[tuple[Optional[int], Optional[int]]]) -> Optional[int]:
    """N of a point from its runs' (scene seed, positives): the positives of each distinct scene set once (the
    fewest where runs of one set scored different numbers); None when no run recorded its positives."""
    by_set: dict[Optional[int], int] = {}
    for scene_seed, positives in runs:
        if positives is None:
            continue
        by_set[scene_seed] = min(by_set.get(scene_seed, positives), int(positives))
    return sum(by_set.values()) if by_set else None


@dataclass(frozen=True)
class PointBand:
    """One curve point of one setting: the mean over seeds, its interval over the pooled scenes, and the
    half-width of the t interval over seeds (None with one seed)."""

    mean: Optional[float]
    low: Optional[float]
    high: Optional[float]
    scenes: Optional[int]  #: N of the interval
    seeds: int
    seed_half: Optional[float]

    @property
    def half(self) -> Optional[float]:
        return None if self.low is None else (self.high - self.low) / 2

    @property
    def too_wide(self) -> bool:
        """Flagged: wider than :data:`MAX_HALF_WIDTH`, or no interval at all."""
        return self.half is None or self.half > MAX_HALF_WIDTH + 1e-12


def _scene_seed(metrics: dict[str, Any]) -> Optional[int]:
    setting = metrics.get("distractors/setting")
    return setting.get("seed") if isinstance(setting, dict) else None


def point_band(metrics_of_runs: list[dict[str, Any]], point: str, metric: str = "exact") -> PointBand:
    """The band of ``distractors/<point>/<metric>`` over runs (each run's flat distractor metrics)."""
    values = [m.get(f"distractors/{point}/{metric}") for m in metrics_of_runs]
    seeds = mean_ci(values, (0.0, 1.0))
    scenes = scene_count((_scene_seed(m), m.get(f"distractors/{point}/positives"))
                         for m, v in zip(metrics_of_runs, values) if v is not None)
    seed_half = None if seeds.low is None else (seeds.high - seeds.low) / 2
    if seeds.mean is None or not scenes:
        return PointBand(seeds.mean, None, None, scenes, seeds.n, seed_half)
    low, high = wilson(seeds.mean, scenes)
    return PointBand(seeds.mean, low, high, scenes, seeds.n, seed_half)


def point_bands(jobs: list[Job], metric: str = "exact", images: int = 1) -> dict[str, PointBand]:
    """Every plotted point (M = ``images``) of one setting by name (``N2/M1/hard/k1``), in curve order."""
    runs = [j.evals.get("distractors", {}) for j in jobs]
    found = {(int(match.group(1)), int(match.group(4)), match.group(3) != "hard"): key
             for m in runs for key in m
             if (match := POINT.match(key)) and match.group(5) == metric and int(match.group(2)) == images}
    names = [found[order].removeprefix("distractors/").removesuffix(f"/{metric}") for order in sorted(found)]
    return {name: point_band(runs, name, metric) for name in names}


def curve_bands(jobs: list[Job], metric: str = "exact", images: int = 1) -> dict[Curve, dict[int, PointBand]]:
    """The same points as curves, ``{(N, M, kind): {k: band}}``; k = 0 (kind none) starts both kinds' curves."""
    curves: dict[Curve, dict[int, PointBand]] = {}
    zero: dict[int, PointBand] = {}
    for name, band in point_bands(jobs, metric, images).items():
        grid, _, kind, count = name.split("/")
        if kind == "none":
            zero[int(grid[1:])] = band
        else:
            curves.setdefault((int(grid[1:]), images, kind), {})[int(count[1:])] = band
    for (grid, _, _), line in curves.items():
        if grid in zero:
            line[0] = zero[grid]
    return curves


def band_table(settings: dict[str, list[Job]]) -> tuple[str, list[str]]:
    """Every plotted point's exact location ± its half-width and N, a column per setting, ⚠ where wider than
    :data:`MAX_HALF_WIDTH`; and per setting a line: how many are flagged, the widest, the widest over seeds."""
    bands = {name: point_bands(jobs) for name, jobs in settings.items()}
    bands = {name: points for name, points in bands.items() if points}
    if not bands:
        return "no setting ran the distractor evaluation", []
    names = list(dict.fromkeys(name for points in bands.values() for name in points))
    lines = [[name, *("—" if name not in points else format_band(points[name]) for points in bands.values())]
             for name in names]
    notes = []
    for setting, points in bands.items():
        flagged = [name for name, band in points.items() if band.too_wide]
        listed = f" ({', '.join(flagged[:6])}{', ...' if len(flagged) > 6 else ''})" if flagged else ""
        halves = {name: math.inf if band.half is None else band.half for name, band in points.items()}
        widest = max(halves, key=halves.__getitem__)
        half = "no interval" if points[widest].half is None else f"±{points[widest].half:.3f}"
        seed_halves = [band.seed_half for band in points.values() if band.seed_half is not None]
        over_seeds = f"; over seeds (Student t) the widest is ±{max(seed_halves):.3f}" if seed_halves else ""
        notes.append(f"{setting}: {len(flagged)} of {len(points)} points wider than ±{MAX_HALF_WIDTH}{listed}; "
                     f"widest {half} at {widest}{over_seeds}")
    return md_table(["point (N, M, kind, k)", *bands], lines), notes


def format_band(band: PointBand) -> str:
    """``0.617 ± 0.071 (N=150)``, with ⚠ when too wide."""
    if band.mean is None:
        return "—"
    flag = " ⚠" if band.too_wide else ""
    if band.half is None:
        return f"{band.mean:.3f} (no N){flag}"
    return f"{band.mean:.3f} ± {band.half:.3f} (N={band.scenes}){flag}"


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m diffpali.report.curve_bands <eval dir> ...``: the runs' distractor points pooled as one setting
    (e.g. one model scored on each seed's scenes), each point's band as the report computes it, flagged."""
    parser = argparse.ArgumentParser(prog="python -m diffpali.report.curve_bands", description=main.__doc__)
    parser.add_argument("runs", nargs="+", help="evaluate.py eval=distractors output directories (metrics.json)")
    parser.add_argument("--label", default="runs", help="the setting's name in the table")
    args = parser.parse_args(argv)
    jobs = []
    for run in args.runs:
        metrics = read_json(Path(run) / METRICS_FILE)
        if metrics is None or not any(POINT.match(key) for key in metrics):
            parser.error(f"{run}: no {METRICS_FILE} with distractor points (an evaluate.py eval=distractors run)")
        jobs.append(Job(run, "completed", evals={"distractors": metrics}))
    table, notes = band_table({args.label: jobs})
    print(table + "\n" + "\n".join(f"- {line}" for line in notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
