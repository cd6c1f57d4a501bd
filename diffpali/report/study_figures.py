"""A sweep's figures: accuracy and the target's attention share against distractors as small multiples
(one panel per setting and grid, vanilla in every panel as a grey reference; 95% bands: exact location over
the pooled scenes (:mod:`.curve_bands`), the attention share over seeds), and
every setting's lambda per layer over training (mean over seeds)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Optional

from ..config import describe
from ..evals.base import pyplot, save_figure
from ..evals.distractors.plots import series_of
from ..lambda_history import read_history
from .curve_bands import curve_bands
from .runs import Job
from .slopes import slope_estimates
from .stats import Estimate, mean_ci
from .sweeps import BASELINE, any_setting

#: (mean, CI low, CI high) per k, per (N, M, kind)
Bands = dict[tuple[int, int, str], dict[int, tuple[Optional[float], Optional[float], Optional[float]]]]


def setting_label(job: Job) -> str:
    """A study or scratch job's setting name (``diff_v2_plain``: two settings may share a variant); for any other
    job ``diff_dup (separate) + swiglu``: the attention variant, and the FFN when it is not the pretrained MLP."""
    setting = any_setting(job)
    if setting is not None:
        return setting
    attn = job.get("attn") or {}
    try:
        name = describe(attn).display
    except ValueError:
        name = str(attn.get("variant"))
    ffn = job.get("ffn.variant")
    return name + (f" + {ffn}" if ffn and ffn != "mlp" else "")


def setting_bands(jobs: list[Job], metric: str) -> Bands:
    """One setting's ``metric`` per (N, M=1, kind) and k: the mean over its seeds with, for exact location (a
    proportion of scenes), the 95% Wilson interval over the pooled scenes (:mod:`.curve_bands`), and for the
    attention share the Student-t 95% CI over seeds."""
    if metric == "exact":
        return {curve: {k: (b.mean, b.low, b.high) for k, b in line.items()}
                for curve, line in curve_bands(jobs, metric).items()}
    per_seed = [series_of(j.evals.get("distractors", {}), metric) for j in jobs]
    lines: Bands = {}
    for key in sorted({key for series in per_seed for key in series}):
        if key[1] != 1:  # one image per sample in the figure; M = 2 is in the tables when measured
            continue
        counts = sorted({k for series in per_seed for k in series.get(key, {})})
        line = {}
        for k in counts:
            est = mean_ci([series.get(key, {}).get(k, (None,))[0] for series in per_seed], (0.0, 1.0))
            line[k] = (est.mean, est.low, est.high)
        lines[key] = line
    return lines


def _draw(ax: Any, line: dict[int, tuple[Optional[float], ...]], color: Any, label: str, width: float) -> None:
    ks = sorted(line)
    ax.plot(ks, [float("nan") if line[k][0] is None else line[k][0] for k in ks], marker="o", ms=3, lw=width,
            color=color, label=label)
    if all(line[k][1] is not None for k in ks):  # a t interval may pass 0 or 1: drawn inside [0, 1]
        ax.fill_between(ks, [max(0.0, line[k][1]) for k in ks], [min(1.0, line[k][2]) for k in ks], color=color,
                        alpha=0.18, lw=0)


def _slope_note(ax: Any, slopes: dict[str, tuple[Estimate, Optional[Estimate]]], name: str) -> None:
    """The panel's slope per distractor (mean over seeds) and, paired by seed, minus vanilla's."""
    if name not in slopes:
        return
    estimate, paired = slopes[name]
    note = f"slope {estimate.mean:+.3f}" + ("" if paired is None else f", vs vanilla {paired.mean:+.3f}")
    ax.text(0.03, 0.04, note, transform=ax.transAxes, fontsize=6.5, color="0.25")


def distractor_figure(settings: dict[str, list[Job]], metric: str, path: Path) -> Optional[Path]:
    """``metric`` (exact | needle_of_image) against k as small multiples: a row per setting (vanilla's own row
    only when it is alone), a column per grid and kind; vanilla's line and band drawn in grey in every panel,
    and each panel's least-squares slope against k (:mod:`.slopes`) written in it."""
    bands = {name: setting_bands(jobs, metric) for name, jobs in settings.items()}
    bands = {name: lines for name, lines in bands.items() if lines}
    if not bands:
        return None
    reference = bands.get(BASELINE, {})
    slopes = slope_estimates(settings, metric)
    rows = [name for name in bands if name != BASELINE] or [BASELINE]
    columns = sorted({(grid, kind) for lines in bands.values() for (grid, _, kind) in lines},
                     key=lambda c: (c[0], c[1] != "hard"))
    plt = pyplot()
    height, width = 1.9 * len(rows) + 0.7, 2.3 * len(columns) + 0.6
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(width, height),
                             squeeze=False, sharex="col", sharey=True)
    for r, name in enumerate(rows):
        for c, (grid, kind) in enumerate(columns):
            ax = axes[r][c]
            if name != BASELINE and (grid, 1, kind) in reference:
                _draw(ax, reference[(grid, 1, kind)], "0.55", BASELINE, 1.0)
            if (grid, 1, kind) in bands[name]:
                _draw(ax, bands[name][(grid, 1, kind)], "C0" if name != BASELINE else "0.3", name, 1.6)
            if metric == "exact":
                ax.axhline(1 / (grid * grid), color="grey", lw=0.7, ls=":")
            _slope_note(ax, slopes.get((grid, 1, kind), {}), name)
            ax.set_xscale("symlog", linthresh=1)
            counts = sorted({k for lines in bands.values() for k in lines.get((grid, 1, kind), {})})
            ax.set_xticks(counts or [0])
            ax.set_xticklabels([str(k) for k in counts or [0]], fontsize=7)
            ax.tick_params(labelsize=7)
            ax.set_ylim(-0.02, 1.02)
            if r == 0:
                ax.set_title(f"{grid}x{grid}, {kind}", fontsize=9)
            if r == len(rows) - 1:
                ax.set_xlabel("distractors k", fontsize=8)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    what = ("exact location (row AND column): mean over seeds, 95% Wilson CI over the pooled scenes of every seed"
            if metric == "exact" else "target cell's share of image attention: mean and 95% CI over seeds")
    title = textwrap.wrap(f"{what}; grey: {BASELINE}" + ("; dotted: chance" if metric == "exact" else ""),
                          width=int(15 * width))  # about 15 characters an inch at 8 points
    fig.suptitle("\n".join(title), fontsize=8, y=1 - 0.06 / height)
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.02 + 0.13 * len(title)) / height))
    return save_figure(fig, path, dpi=110)


def lambda_histories(jobs: list[Job]) -> list[dict[str, list[tuple[int, float]]]]:
    """The lambda history of every run that recorded one (vanilla runs have none)."""
    histories = []
    for job in jobs:
        if job.directory is None:
            continue
        try:
            histories.append(read_history(job.directory))
        except (OSError, ValueError):
            continue
    return histories


def lambda_figure(settings: dict[str, list[Job]], path: Path) -> Optional[Path]:
    """Each differential setting's lambda per text layer over training steps (mean over seeds)."""
    curves: dict[str, dict[str, dict[int, list[float]]]] = {}
    for jobs in settings.values():
        label = setting_label(jobs[0])
        for history in lambda_histories(jobs):
            for name, points in history.items():
                if not name.startswith("text/") or name.count("/") != 1:
                    continue
                for step, value in points:
                    curves.setdefault(label, {}).setdefault(name, {}).setdefault(step, []).append(value)
    if not curves:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.2), squeeze=False)
    for ax, (label, layers) in zip(axes[0], curves.items()):
        for depth, name in enumerate(sorted(layers, key=lambda n: int(n.split("layer")[-1]))):
            steps = sorted(layers[name])
            ax.plot(steps, [sum(layers[name][s]) / len(layers[name][s]) for s in steps],
                    color=plt.cm.viridis(depth / max(1, len(layers) - 1)), label=name.split("/")[1])
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel("lambda (text tower; V2: mean over tokens)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
