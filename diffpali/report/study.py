"""The study (``experiment=study``): every evaluation of every setting over seeds, with 95% confidence
intervals, each variant compared with vanilla by a paired bootstrap on the same seeds and items.

Written into the report's folder: ``results.md`` (the tables, the findings, the paper side by side),
``study.csv`` (every figure with its interval and n), and the figures of :mod:`.study_figures`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..evals.base import read_items
from .format import md_table, write_csv
from .runs import Job
from .section import Report, Section
from .stats import Comparison, Estimate, format_p, mean_ci, paired_bootstrap
from .study_figures import distractor_figure, lambda_figure, lambda_histories, setting_label, study_setting
from .table1 import PAPER_TABLE1
from .table2 import PAPER_TABLE2

BASELINE = "vanilla"
REPLICATES = 2000  #: bootstrap replicates of every paired comparison
FRACTION = (0.0, 1.0)  #: every figure here is a fraction: no interval passes 0 or 1
#: (evaluation, metric, label, compared with vanilla item by item)
HEADLINES: tuple[tuple[str, str, str], ...] = (
    ("vqa", "test/vqa_accuracy_official", "VQA, easy-vqa test (official VQAv2 accuracy)"),
    ("mmneedle_paper", "mmneedle/exact", "MMNeedle paper mode, 2x2: exact (row AND column; chance 0.25)"),
    ("mmneedle_paper", "mmneedle/column", "MMNeedle paper mode: column only (the paper's scorer; chance 0.5)"),
    ("mmneedle_official", "mmneedle/exact", "MMNeedle official, M=1 N=2: exact (chance 0.25)"),
    ("mmneedle_official", "mmneedle/existence", "MMNeedle official: existence (chance 0.5)"),
    ("pope", "pope/random/accuracy", "POPE random: accuracy"),
    ("pope", "pope/popular/accuracy", "POPE popular: accuracy"),
    ("pope", "pope/adversarial/accuracy", "POPE adversarial: accuracy"),
)


def has_results(job: Job) -> bool:
    return job.status == "completed" and study_setting(job) is not None and bool(job.evals)


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


def settings_of(jobs: list[Job]) -> dict[str, list[Job]]:
    """Completed study jobs by setting, vanilla first."""
    found: dict[str, list[Job]] = {}
    for job in jobs:
        if has_results(job):
            found.setdefault(study_setting(job), []).append(job)
    return dict(sorted(found.items(), key=lambda kv: (kv[0] != BASELINE, kv[0])))


def headline_table(settings: dict[str, list[Job]]) -> tuple[str, list[dict[str, Any]]]:
    baseline = settings.get(BASELINE, [])
    lines, csv_rows = [], []
    for evaluation, metric, label in HEADLINES:
        for name, jobs in settings.items():
            result = cell(jobs, baseline, evaluation, metric, paired=True)
            if result.estimate.n == 0:
                continue
            against = "—" if result.comparison is None else result.comparison.format()
            lines.append([label, setting_label(jobs[0]), result.estimate.format(), against])
            csv_rows.append({"metric": label, "evaluation": evaluation, "key": metric, "setting": name,
                             "mean": result.estimate.mean,
                             "ci_low": result.estimate.low, "ci_high": result.estimate.high, "n": result.estimate.n,
                             **_comparison_columns(result.comparison)})
    table = md_table(["metric", "setting", "mean ± 95% CI over seeds", "minus vanilla [95% CI], p (paired)"], lines)
    return table, csv_rows


def _comparison_columns(comparison: Optional[Comparison]) -> dict[str, Any]:
    if comparison is None:
        return {"diff": None, "diff_low": None, "diff_high": None, "p_value": None}
    return {"diff": comparison.difference, "diff_low": comparison.low, "diff_high": comparison.high,
            "p_value": comparison.p_value}


def distractor_table(settings: dict[str, list[Job]]) -> tuple[str, list[dict[str, Any]]]:
    """Exact location at the hardest points of each grid (the most distractors, hard and easy) and at k = 0."""
    baseline = settings.get(BASELINE, [])
    keys = sorted({k for jobs in settings.values() for j in jobs for k in j.evals.get("distractors", {})
                   if k.endswith("/exact") and "/M1/" in k})
    chosen = _extreme_points(keys)
    lines, csv_rows = [], []
    for key in chosen:
        point = key.removeprefix("distractors/").removesuffix("/exact")
        for name, jobs in settings.items():
            result = cell(jobs, baseline, "distractors", key, paired=True)
            share = mean_ci([j.evals["distractors"].get(key.replace("/exact", "/needle_of_image")) for j in jobs],
                            FRACTION)
            against = "—" if result.comparison is None else result.comparison.format()
            lines.append([point, setting_label(jobs[0]), result.estimate.format(), against, share.format()])
            csv_rows.append({"metric": f"distractors {point} exact", "evaluation": "distractors", "key": key,
                             "setting": name, "mean": result.estimate.mean,
                             "ci_low": result.estimate.low, "ci_high": result.estimate.high,
                             "n": result.estimate.n, **_comparison_columns(result.comparison)})
    header = ["point (N, M, kind, k)", "setting", "exact ± 95% CI", "minus vanilla (paired)",
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


def paper_side_by_side(settings: dict[str, list[Job]]) -> str:
    """The paper's Tables 1 and 2 beside the nearest figures of this study, each difference in protocol named."""
    def ours(name: str, evaluation: str, metric: str) -> str:
        jobs = settings.get(name)
        if not jobs:
            return "—"
        return mean_ci([j.evals.get(evaluation, {}).get(metric) for j in jobs], FRACTION).format(100, 1)

    lines = [
        ["Table 1 row 1: vanilla, MLP", f"{PAPER_TABLE1[1].vqav2:.2f}",
         ours("vanilla", "vqa", "test/vqa_accuracy_official")],
        ["Table 1 row 2: diff (dup) + SwiGLU", f"{PAPER_TABLE1[2].vqav2:.2f}",
         ours("diff_dup_swiglu", "vqa", "test/vqa_accuracy_official")],
        ["Table 1 row 5: diff (original) + SwiGLU", f"{PAPER_TABLE1[5].vqav2:.2f}", "— (diff_split here has the MLP)"],
        ["Table 2: fine-tuned PaliGemma", f"{PAPER_TABLE2['fine-tuned PaliGemma']:.2f}",
         ours("vanilla", "mmneedle_paper", "mmneedle/exact")],
        ["Table 2: fine-tuned with diff attn", f"{PAPER_TABLE2['fine-tuned with diff attn']:.2f}",
         ours("diff_dup_shared", "mmneedle_paper", "mmneedle/column") + " column only, diff_dup shared"],
    ]
    notes = [
        "The paper: PaliGemma 3B on 40% of VQAv2, one seed per row; here: the embedded tiny base on easy-vqa, "
        "mean ± 95% CI over seeds (percent). The numbers are not comparable in level, only in protocol.",
        "The paper's Table 2 scorer graded its diff model on the column alone (chance 50%) and its baseline on row "
        "AND column (chance 25%); here every model is scored on row AND column, and the column-only figure is shown "
        "beside it, labelled, so the paper's number can be reproduced and explained.",
        "The paper's released diff_dup uses Q2, K2 = Q1, K1 (``attn.dup_mode=shared``): lambda is then inert "
        "(docs/design.md); ``separate`` (the default) gives the second branch its own weights.",
    ]
    table = md_table(["the paper", "paper (%)", "ours (%)"], lines)
    return table + "\n\n" + "\n".join(f"- {n}" for n in notes)


def findings(csv_rows: list[dict[str, Any]]) -> list[str]:
    """One line per setting: on how many figures it is significantly below, above or level with vanilla (the
    95% CI of the paired difference excludes 0, or not), and its largest significant gap."""
    by_setting: dict[str, list[dict[str, Any]]] = {}
    for row in csv_rows:
        if row.get("diff") is not None:
            by_setting.setdefault(row["setting"], []).append(row)
    out = []
    for setting, rows in by_setting.items():
        lower = [r for r in rows if r["diff_high"] < 0]
        higher = [r for r in rows if r["diff_low"] > 0]
        line = (f"{setting}: below vanilla on {len(lower)} of {len(rows)} figures, above on {len(higher)}, "
                f"no significant difference on {len(rows) - len(lower) - len(higher)}")
        if lower or higher:
            gap = max(lower + higher, key=lambda r: abs(r["diff"]))
            line += (f"; largest gap: {gap['metric']}, {gap['diff']:+.3f} [{gap['diff_low']:+.3f}, "
                     f"{gap['diff_high']:+.3f}], {format_p(gap['p_value'], REPLICATES)}")
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


#: study.csv: one row per figure and setting; ``evaluation`` and ``key`` locate the figure in a run's evals
STUDY_CSV_FIELDS = ["metric", "evaluation", "key", "setting", "mean", "ci_low", "ci_high", "n", "diff", "diff_low",
                    "diff_high", "p_value"]
_NUMBERS = ("mean", "ci_low", "ci_high", "diff", "diff_low", "diff_high", "p_value")


def read_study_csv(path: Path) -> list[dict[str, Any]]:
    """The rows of a study.csv, numbers as floats (None where empty) and n as an int."""
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row.update({k: float(row[k]) if row[k] != "" else None for k in _NUMBERS})
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


def lambda_table(settings: dict[str, list[Job]]) -> str:
    """Each differential setting's lambda at the end of its fine-tune, per tower and layer (mean ± 95% CI over
    seeds; DIFF V2: the mean over the last batch's tokens). Says how far training moved the retrofit."""
    lines = []
    for name, jobs in settings.items():
        finals = final_lambdas(jobs)
        if finals:
            cells = [f"{key}: {mean_ci(values).format()}" for key, values in sorted(finals.items())]
            lines.append([name, "; ".join(cells)])
    if not lines:
        return "no differential setting recorded lambda"
    return md_table(["setting", "lambda after the fine-tune, per layer (mean ± 95% CI over seeds)"], lines)


def write(report: Report) -> dict[str, Path]:
    settings = settings_of(report.jobs)
    headline, rows = headline_table(settings)
    distractors, more_rows = distractor_table(settings)
    rows += more_rows
    written = {"study.csv": report.out / "study.csv"}
    write_csv(written["study.csv"], rows, STUDY_CSV_FIELDS)
    drawn = {"distractors_exact.png": distractor_figure(settings, "exact", report.out / "distractors_exact.png"),
             "distractors_attention.png": distractor_figure(settings, "needle_of_image",
                                                            report.out / "distractors_attention.png"),
             "lambda_trajectories.png": lambda_figure(settings, report.out / "lambda_trajectories.png")}
    figures = {name: path for name, path in drawn.items() if path is not None}
    seeds = sorted({str(j.seed) for jobs in settings.values() for j in jobs})
    seconds = sum(float(j.metrics.get("total_seconds") or 0) for jobs in settings.values() for j in jobs)
    text = [
        "# The study: differential attention against distractors",
        "",
        f"{sum(len(j) for j in settings.values())} runs from `{report.source}`: {len(settings)} settings x seeds "
        f"{', '.join(seeds)}; each a LoRA fine-tune of the embedded base on easy-vqa, then every evaluation of the "
        f"trained model ({seconds / 60:.0f} min of jobs in all). Intervals: Student t over seeds; differences: paired "
        "bootstrap over seeds and items "
        f"({REPLICATES:,} replicates), two-sided p.",
        "",
        "## Every evaluation", "", headline, "",
        "## Distractor scaling (drawn scenes, held out; MMNeedle's official prompt)", "", distractors, "",
        "## Attention on the needle (MMNeedle haystacks, the answer rows)", "", attention_table(settings), "",
        "## Lambda after the fine-tune", "", lambda_table(settings), "",
    ]
    text += [f"![{name}]({name})" for name in figures] + ["", "## Findings", ""]
    text += ["Each setting against vanilla, over every figure above (a figure counts as different when the 95% "
             "CI of the paired difference excludes 0):", ""]
    text += [f"- {line}" for line in findings(rows)] or ["- no comparison with vanilla (no vanilla runs)"]
    text += ["", "## The paper, side by side", "", paper_side_by_side(settings), ""]
    written["results.md"] = report.out / "results.md"
    written["results.md"].write_text("\n".join(text))
    written.update(figures)
    return written


SECTION = Section("results", has_results, write)
