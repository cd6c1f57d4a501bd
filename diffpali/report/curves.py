"""Learning curves (``curve.steps`` in a run's config): a subset of the evaluations scored at a few optimiser
steps during the fit (``<run>/evals/<name>@<step>/``), one line per setting and figure, mean ± 95% CI over
seeds at each step, and the paired difference from the arm's vanilla at the last one."""

from __future__ import annotations

from typing import Any

from .format import md_table
from .runs import Job
from .stats import mean_ci
from .sweeps import BASELINE

#: evaluation -> (metric, label) of the curve's figures
CURVE_FIGURES: dict[str, tuple[str, str]] = {
    "vqa": ("test/vqa_accuracy_official", "VQA (official)"),
    "mmneedle_paper": ("mmneedle/exact", "MMNeedle paper 2x2 exact"),
    "mmneedle_official": ("mmneedle/exact", "MMNeedle official N=2 exact"),
}
FRACTION = (0.0, 1.0)


def curve_points(job: Job) -> dict[str, dict[int, dict[str, Any]]]:
    """``{evaluation: {step: its metrics}}`` of one run's learning curve."""
    points: dict[str, dict[int, dict[str, Any]]] = {}
    for label, metrics in job.evals.items():
        name, at, step = label.partition("@")
        if at and step.isdigit():
            points.setdefault(name, {})[int(step)] = metrics
    return points


def curve_table(settings: dict[str, list[Job]]) -> str:
    """Every setting's curve figures at each step it was scored (on the curve's subset of samples)."""
    per_setting = {name: {j.seed: curve_points(j) for j in jobs} for name, jobs in settings.items()}
    steps = sorted({s for runs in per_setting.values() for run in runs.values() for points in run.values()
                    for s in points})
    if not steps:
        return "no run scored a learning curve (curve.steps)"
    baseline = per_setting.get(BASELINE, {})
    lines = []
    for evaluation, (metric, label) in CURVE_FIGURES.items():
        for name, runs in per_setting.items():
            if not any(evaluation in run for run in runs.values()):
                continue
            cells = [mean_ci([run.get(evaluation, {}).get(s, {}).get(metric) for run in runs.values()],
                             FRACTION).format() for s in steps]
            gap = "—"
            if name != BASELINE and baseline:
                last = {seed: run.get(evaluation, {}).get(steps[-1], {}).get(metric) for seed, run in runs.items()}
                reference = {seed: run.get(evaluation, {}).get(steps[-1], {}).get(metric)
                             for seed, run in baseline.items()}
                gaps = [value - reference[seed] for seed, value in last.items()
                        if value is not None and reference.get(seed) is not None]
                gap = mean_ci(gaps).format() if gaps else "—"
            lines.append([label, name, *cells, gap])
    header = ["figure (curve subset)", "setting", *(f"step {s}" for s in steps),
              f"minus vanilla at step {steps[-1]} (seed by seed)"]
    return md_table(header, lines)
