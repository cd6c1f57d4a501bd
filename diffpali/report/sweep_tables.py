"""The tables of a sweep (the study, or the from-scratch arm): every evaluation of every setting over seeds,
with 95% confidence intervals, each setting compared with vanilla by a paired bootstrap on the same seeds
and items; beside every location figure, the share of replies that were out of format.

Rows of the sweep's CSV (``study.csv``, ``scratch.csv``) are dicts with :data:`CSV_FIELDS`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..evals.base import read_items
from .base_lambda import MOVED
from .format import md_table
from .runs import Job
from .stats import Comparison, Estimate, by_direction, format_p, mean_ci, paired_bootstrap
from .study_figures import lambda_histories, setting_label
from .sweeps import BASELINE

REPLICATES = 2000  #: bootstrap replicates of every paired comparison
FRACTION = (0.0, 1.0)  #: every figure here is a fraction: no interval passes 0 or 1
#: (evaluation, metric, label): the rows of "Every evaluation", each compared with vanilla item by item; a row
#: whose evaluation no run has (official N=3 and N=4 are the scratch arm's) is left out
HEADLINES: tuple[tuple[str, str, str], ...] = (
    ("vqa", "test/vqa_accuracy_official", "VQA, easy-vqa test (official VQAv2 accuracy)"),
    ("mmneedle_paper", "mmneedle/exact", "MMNeedle paper mode, 2x2: exact (row AND column; chance 0.25)"),
    ("mmneedle_paper", "mmneedle/column", "MMNeedle paper mode: column only (the paper's scorer; chance 0.5)"),
    ("mmneedle_official", "mmneedle/exact", "MMNeedle official, M=1 N=2: exact (chance 0.25)"),
    ("mmneedle_official", "mmneedle/existence", "MMNeedle official: existence (chance 0.5)"),
    ("mmneedle_official_n3", "mmneedle/exact", "MMNeedle official, M=1 N=3: exact (chance 0.111)"),
    ("mmneedle_official_n4", "mmneedle/exact", "MMNeedle official, M=1 N=4: exact (chance 0.062)"),
    ("pope", "pope/random/accuracy", "POPE random: accuracy"),
    ("pope", "pope/popular/accuracy", "POPE popular: accuracy"),
    ("pope", "pope/adversarial/accuracy", "POPE adversarial: accuracy"),
)
INVALID_HEADER = "replies out of format (share)"


@dataclass
class Cell:
    """One figure of one setting: its estimate over seeds and, against vanilla, the paired comparison."""

    estimate: Estimate
    comparison: Optional[Comparison] = None


def seed_items(job: Job, evaluation: str, metric: str) -> Optional[dict[Any, float]]:
    path = job.items_file(evaluation)
    return read_items(path).get(metric) if path else None


def compare(jobs: list[Job], baseline: list[Job], evaluation: str, metric: str) -> Optional[Comparison]:
    """Paired bootstrap of ``metric`` over the seeds both settings have, on the items both scored."""
    by_seed = {j.seed: j for j in baseline}
    variant_scores, baseline_scores = [], []
    for job in sorted(jobs, key=lambda j: str(j.seed)):
        other = by_seed.get(job.seed)
        mine = seed_items(job, evaluation, metric)
        theirs = seed_items(other, evaluation, metric) if other else None
        if not mine or not theirs:
            continue
        shared = sorted(set(mine) & set(theirs), key=str)
        variant_scores.append([mine[i] for i in shared])
        baseline_scores.append([theirs[i] for i in shared])
    if not variant_scores or not variant_scores[0]:
        return None
    return paired_bootstrap(variant_scores, baseline_scores, replicates=REPLICATES)


def cell(jobs: list[Job], baseline: list[Job], evaluation: str, metric: str, paired: bool) -> Cell:
    estimate = mean_ci([j.evals.get(evaluation, {}).get(metric) for j in jobs], FRACTION)
    comparison = compare(jobs, baseline, evaluation, metric) if paired and jobs is not baseline else None
    return Cell(estimate, comparison)


def invalid_share(metrics: dict[str, Any], prefix: str) -> Optional[float]:
    """The share of replies that parsed as no answer at all (``<prefix>invalid`` over the questions asked:
    paper mode asks two per haystack, row and column; official mode one), or None when not recorded."""
    invalid = metrics.get(f"{prefix}invalid")
    if invalid is None:
        return None
    haystacks = metrics.get(f"{prefix}samples")
    if haystacks is None:
        haystacks = (metrics.get(f"{prefix}positives") or 0) + (metrics.get(f"{prefix}negatives") or 0)
    questions = haystacks * (2 if metrics.get(f"{prefix}mode") == "paper" else 1)
    return invalid / questions if questions else None


def invalid_estimate(jobs: list[Job], evaluation: str, prefix: str) -> Estimate:
    return mean_ci([invalid_share(j.evals.get(evaluation, {}), prefix) for j in jobs], FRACTION)


def figure_row(label: str, evaluation: str, key: str, setting: str, result: Cell,
               invalid: Optional[Estimate] = None) -> dict[str, Any]:
    """One CSV row: the figure, its estimate over seeds, the paired comparison and the invalid-reply share."""
    est = result.estimate
    row = {"metric": label, "evaluation": evaluation, "key": key, "setting": setting, "mean": est.mean,
           "ci_low": est.low, "ci_high": est.high, "n": est.n, **comparison_columns(result.comparison)}
    if invalid is not None and invalid.n:
        row.update({"invalid": invalid.mean, "invalid_low": invalid.low, "invalid_high": invalid.high})
    return row


def headline_table(settings: dict[str, list[Job]]) -> tuple[str, list[dict[str, Any]]]:
    baseline = settings.get(BASELINE, [])
    lines, csv_rows = [], []
    for evaluation, metric, label in HEADLINES:
        for name, jobs in settings.items():
            result = cell(jobs, baseline, evaluation, metric, paired=True)
            if result.estimate.n == 0:
                continue
            invalid = invalid_estimate(jobs, evaluation, "mmneedle/") if evaluation.startswith("mmneedle") else None
            against = "—" if result.comparison is None else result.comparison.format()
            lines.append([label, setting_label(jobs[0]), result.estimate.format(), against,
                          invalid.format() if invalid is not None else ""])
            csv_rows.append(figure_row(label, evaluation, metric, name, result, invalid))
    header = ["metric", "setting", "mean ± 95% CI over seeds", "minus vanilla [95% CI], p (paired)", INVALID_HEADER]
    return md_table(header, lines), csv_rows


def comparison_columns(comparison: Optional[Comparison]) -> dict[str, Any]:
    if comparison is None:
        return {"diff": None, "diff_low": None, "diff_high": None, "p_value": None}
    return {"diff": comparison.difference, "diff_low": comparison.low, "diff_high": comparison.high,
            "p_value": comparison.p_value}


def distractor_table(settings: dict[str, list[Job]]) -> tuple[str, list[dict[str, Any]]]:
    """Exact location at the hardest points of each grid (the most distractors, hard and easy) and at k = 0."""
    baseline = settings.get(BASELINE, [])
    keys = sorted({k for jobs in settings.values() for j in jobs for k in j.evals.get("distractors", {})
                   if k.endswith("/exact") and "/M1/" in k})
    lines, csv_rows = [], []
    for key in _extreme_points(keys):
        point = key.removeprefix("distractors/").removesuffix("/exact")
        for name, jobs in settings.items():
            result = cell(jobs, baseline, "distractors", key, paired=True)
            share = mean_ci([j.evals["distractors"].get(key.replace("/exact", "/needle_of_image")) for j in jobs],
                            FRACTION)
            invalid = invalid_estimate(jobs, "distractors", key.removesuffix("exact"))
            against = "—" if result.comparison is None else result.comparison.format()
            lines.append([point, setting_label(jobs[0]), result.estimate.format(), against, invalid.format(),
                          share.format()])
            csv_rows.append(figure_row(f"distractors {point} exact", "distractors", key, name, result, invalid))
    header = ["point (N, M, kind, k)", "setting", "exact ± 95% CI", "minus vanilla (paired)", INVALID_HEADER,
              "target cell's share of image attention, last layer"]
    return md_table(header, lines), csv_rows


def _extreme_points(keys: list[str]) -> list[str]:
    """Per grid: k = 0 and the largest k of each kind."""
    best: dict[tuple[str, str], tuple[int, str]] = {}
    for key in keys:
        _, grid, images, kind, count, _ = key.split("/")
        k = int(count[1:])
        slot = (grid + images, kind)
        if slot not in best or k > best[slot][0]:
            best[slot] = (k, key)
    return [key for _, key in sorted(best.values(), key=lambda kv: kv[1])]


def findings(csv_rows: list[dict[str, Any]]) -> list[str]:
    """One line per setting: on how many figures it is significantly below, above or level with vanilla (the
    95% CI of the paired bootstrap difference excludes 0, or not), and its largest significant gap. Rows with
    no bootstrap p-value (slopes, lambda) are not figures of this count."""
    out = []
    figures = [r for r in csv_rows if r.get("diff") is not None and r.get("p_value") is not None]
    for setting, (rows, lower, higher) in by_direction(figures).items():
        line = (f"{setting}: below vanilla on {len(lower)} of {len(rows)} figures, above on {len(higher)}, "
                f"no significant difference on {len(rows) - len(lower) - len(higher)}")
        if lower or higher:
            gap = max(lower + higher, key=lambda r: abs(r["diff"]))
            line += (f"; largest gap: {gap['metric']}, {gap['diff']:+.3f} [{gap['diff_low']:+.3f}, "
                     f"{gap['diff_high']:+.3f}], {format_p(gap['p_value'], REPLICATES)}")
            if gap.get("invalid") is not None and gap["invalid"] >= 0.005:  # out of format is not a wrong cell
                line += (f", where {gap['invalid']:.2f} of its replies were out of format (they named no cell; "
                         f"the other misses named a wrong one)")
        out.append(line + ".")
    return out


def attention_table(settings: dict[str, list[Job]]) -> str:
    """Where the answer rows look on MMNeedle haystacks (``eval=attention`` after each fine-tune): per text
    layer, the needle cell's share of the image attention and the share of all attention on the image, each
    mean ± 95% CI over seeds (not paired: the analysis keeps no per-haystack record)."""
    layers = sorted({int(k.split("/")[2].removeprefix("layer")) for jobs in settings.values() for j in jobs
                     for k in j.evals.get("attention", {}) if k.startswith("attention/text/layer")})
    lines = []
    for name, jobs in settings.items():
        values = [j.evals.get("attention", {}) for j in jobs]
        for layer in layers:
            prefix = f"attention/text/layer{layer}/"
            needle = mean_ci([v.get(prefix + "needle_of_image") for v in values], FRACTION)
            image = mean_ci([None if v.get(prefix + "text") is None else 1 - v[prefix + "text"] for v in values])
            if needle.n:
                lines.append([name, layer, needle.format(), image.format()])
    if not lines:
        return "no setting ran eval=attention"
    chance = next((j.evals["attention"].get("attention/chance_needle_of_image") for jobs in settings.values()
                   for j in jobs if "attention" in j.evals), None)
    header = ["setting", "text layer", "needle cell / image attention" + (f" (chance {chance:.2f})" if chance else ""),
              "image / all attention"]
    return md_table(header, lines)


#: the sweep's CSV: one row per figure and setting; ``evaluation`` and ``key`` locate the figure in a run's evals;
#: ``invalid*``: the share of that evaluation's replies that were out of format (location figures only)
CSV_FIELDS = ["metric", "evaluation", "key", "setting", "mean", "ci_low", "ci_high", "n", "diff", "diff_low",
              "diff_high", "p_value", "invalid", "invalid_low", "invalid_high"]
_NUMBERS = ("mean", "ci_low", "ci_high", "diff", "diff_low", "diff_high", "p_value", "invalid", "invalid_low",
            "invalid_high")


def read_study_csv(path: Path) -> list[dict[str, Any]]:
    """The rows of a sweep's CSV, numbers as floats (None where empty or absent) and n as an int."""
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row.update({k: float(row[k]) if row.get(k) not in ("", None) else None for k in _NUMBERS})
        row["n"] = int(row["n"])
    return rows


def final_lambdas(jobs: list[Job]) -> dict[str, list[float]]:
    """``{"text/layer0": [lambda at the last recorded step, one per run], ...}`` (V2: the mean over tokens)."""
    finals: dict[str, list[float]] = {}
    for history in lambda_histories(jobs):
        for key, points in history.items():
            if key.count("/") == 1 and points:
                finals.setdefault(key, []).append(points[-1][1])
    return finals


def run_lambda_changes(history: dict[str, list[tuple[int, float]]]) -> dict[str, float]:
    """``{"text/layer0": last - first recorded lambda}`` of one run: how far its training moved lambda. Under a
    warm-up the ramp moves lambda whatever is learnt, so there it is the learned part's move (``<layer>/learned``)."""
    changes = {}
    for key, points in history.items():
        if key.count("/") == 1 and points:
            moved = history.get(f"{key}/learned") or points
            changes[key] = moved[-1][1] - moved[0][1]
    return changes


def lambda_changes(jobs: list[Job]) -> dict[str, list[float]]:
    """``{"text/layer0": [:func:`run_lambda_changes`, one per run], ...}``."""
    changes: dict[str, list[float]] = {}
    for history in lambda_histories(jobs):
        for key, change in run_lambda_changes(history).items():
            changes.setdefault(key, []).append(change)
    return changes


def lambda_moved(settings: dict[str, list[Job]], prefix: str = "") -> list[str]:
    """Per differential setting (its name after ``prefix``), in how many runs lambda moved at least ``MOVED`` from
    its start in some layer (its learned part under a warm-up), and each run where it did not, with its largest
    move."""
    lines = []
    for name, jobs in settings.items():
        runs = [(job, run_lambda_changes(history)) for job in jobs for history in lambda_histories([job])]
        runs = [(job, changes) for job, changes in runs if changes]
        if not runs:
            continue
        still = []
        for job, changes in runs:
            layer, change = max(changes.items(), key=lambda kv: abs(kv[1]))
            if abs(change) < MOVED:
                still.append(f"seed {job.seed} (largest move {change:+.3f}, {layer})")
        moved = len(runs) - len(still)
        line = f"{prefix}{name}: lambda moved at least {MOVED} in some layer in {moved} of {len(runs)} runs"
        lines.append(line + (f"; it did not in {', '.join(still)}" if still else "") + ".")
    return lines


def lambda_table(settings: dict[str, list[Job]]) -> str:
    """Each differential setting's lambda at the end of its fine-tune, per tower and layer (mean ± 95% CI over
    seeds; DIFF V2: the mean over the last batch's tokens), and in how many runs it moved at least ``MOVED``
    from its first recorded value (:func:`run_lambda_changes`). Says how far training moved the retrofit."""
    lines = []
    for name, jobs in settings.items():
        finals, changes = final_lambdas(jobs), lambda_changes(jobs)
        if finals:
            cells = [f"{key}: {mean_ci(values).format()}, moved in "
                     f"{sum(abs(c) >= MOVED for c in changes.get(key, []))} of {len(changes.get(key, []))}"
                     for key, values in sorted(finals.items())]
            lines.append([name, "; ".join(cells)])
    if not lines:
        return "no differential setting recorded lambda"
    return md_table(["setting", "lambda after the fine-tune, per layer (mean ± 95% CI over seeds), and in how many "
                     f"runs it moved at least {MOVED} from its first record"], lines)
