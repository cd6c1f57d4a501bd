"""The study's figures: accuracy and the target's attention share against distractors (one line per
setting, a 95% band over seeds), and every setting's lambda per layer over training (mean over seeds)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..config import describe
from ..evals.base import pyplot, save_figure
from ..evals.distractors.plots import distractor_curves, series_of
from ..lambda_history import read_history
from .runs import Job
from .stats import mean_ci


def study_setting(job: Job) -> Optional[str]:
    """The study setting of a job: its ``+experiment/study=<name>`` override."""
    for item in job.overrides:
        key, _, value = item.lstrip("+").partition("=")
        if key == "experiment/study":
            return value
    return None


def setting_label(job: Job) -> str:
    """A study job's setting name (``diff_v2_plain``: two settings may share a variant); for any other job
    ``diff_dup (separate) + swiglu``: the attention variant, and the FFN when it is not the pretrained MLP."""
    setting = study_setting(job)
    if setting is not None:
        return setting
    attn = job.get("attn") or {}
    try:
        name = describe(attn).display
    except ValueError:
        name = str(attn.get("variant"))
    ffn = job.get("ffn.variant")
    return name + (f" + {ffn}" if ffn and ffn != "mlp" else "")


def distractor_figure(settings: dict[str, list[Job]], metric: str, path: Path) -> Optional[Path]:
    """``metric`` (exact | needle_of_image) against k, one band per setting (mean and 95% CI over seeds)."""
    bands = {}
    for jobs in settings.values():
        per_seed = [series_of(j.evals.get("distractors", {}), metric) for j in jobs]
        lines = {}
        for key in sorted({key for series in per_seed for key in series}):
            if key[1] != 1:  # one image per sample in the figure; M = 2 is in the tables when measured
                continue
            counts = sorted({k for series in per_seed for k in series.get(key, {})})
            line = {}
            for k in counts:
                est = mean_ci([series.get(key, {}).get(k, (None,))[0] for series in per_seed], (0.0, 1.0))
                line[k] = (est.mean, est.low, est.high)
            lines[key] = line
        if lines:
            bands[setting_label(jobs[0])] = lines
    if not bands:
        return None
    what = "exact location (image, row AND column)" if metric == "exact" else "target cell's share of image attention"
    title = f"{what}: mean and 95% CI over seeds; hard (solid) and easy (dashed) distractors"
    return distractor_curves({}, path, title, metric=metric, bands=bands)


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
