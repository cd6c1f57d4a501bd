"""A sweep's section of the report (``experiment=study``, and the from-scratch arm ``experiment=scratch``):
every evaluation of every setting over seeds, with 95% confidence intervals, each setting compared with
vanilla by a paired bootstrap on the same seeds and items (the tables are :mod:`.sweep_tables`'), the slope of
accuracy against the number of distractors (:mod:`.slopes`), lambda at the end of pretraining where the runs'
bases recorded it (:mod:`.base_lambda`), and the figures of :mod:`.study_figures`.

The study writes ``results.md``, ``study.csv`` and its figures; the scratch arm ``scratch.md``,
``scratch.csv`` and ``scratch_*.png`` (:mod:`.sweeps`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from .base_lambda import base_lambda_table
from .curve_bands import MAX_HALF_WIDTH, band_table
from .curves import curve_points, curve_table
from .format import md_table, write_csv
from .runs import Job
from .section import Report, Section
from .slopes import slope_findings, slope_table
from .stats import mean_ci
from .study_figures import distractor_figure, lambda_figure
from .sweep_tables import (
    CSV_FIELDS,
    FRACTION,
    REPLICATES,
    attention_table,
    distractor_table,
    findings,
    headline_table,
    lambda_moved,
    lambda_table,
)
from .sweeps import ARMS, STUDY, Arm, Sweep, by_arm, setting_of, settings_of
from .table1 import PAPER_TABLE1
from .table2 import PAPER_TABLE2

STUDY_CSV_FIELDS = CSV_FIELDS  #: study.csv's columns (the README's findings read them)


def has_results_in(sweep: Sweep) -> Callable[[Job], bool]:
    """Whether a job is a completed job of ``sweep`` with evaluations."""
    return lambda job: job.status == "completed" and setting_of(job, sweep) is not None and bool(job.evals)


has_results = has_results_in(STUDY)


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


def arm_block(settings: dict[str, list[Job]], sweep: Sweep, out: Path, arm: Optional[Arm],
              titled: bool) -> tuple[list[str], list[dict], dict[str, Path]]:
    """One arm's sections (every table against the arm's vanilla), its CSV rows and its figures. ``titled``:
    the sections' titles name the arm (a study of several arms)."""
    prefix = arm.prefix if arm is not None else ""
    headline, rows = headline_table(settings)
    distractors, more_rows = distractor_table(settings)
    slopes, slope_rows = slope_table(settings)
    bands, band_notes = band_table(settings)
    lambdas, lambda_summary, lambda_rows = base_lambda_table(settings)
    rows += more_rows + slope_rows + lambda_rows
    for row in rows:
        row["setting"] = prefix + row["setting"]
    figure_prefix = sweep.figure_prefix + prefix
    names = {f"{figure_prefix}distractors_exact.png": ("exact", distractor_figure),
             f"{figure_prefix}distractors_attention.png": ("needle_of_image", distractor_figure)}
    drawn = {name: draw(settings, metric, out / name) for name, (metric, draw) in names.items()}
    trajectories = f"{figure_prefix}lambda_trajectories.png"
    drawn[trajectories] = lambda_figure(settings, out / trajectories)
    figures = {name: path for name, path in drawn.items() if path is not None}
    suffix = f" ({arm.title})" if titled and arm is not None else ""
    text = [
        f"## Every evaluation{suffix}", "", headline, "",
        f"## Distractor scaling (drawn scenes, held out; MMNeedle's official prompt){suffix}", "", distractors, "",
        f"## Distractor curve points: 95% half-widths{suffix}", "",
        "Exact location at every plotted point (M = 1): mean over seeds ± the half-width of its 95% Wilson interval "
        "over N scenes, the positives of every distinct scene set pooled (each seed draws its own); conditional on "
        f"the trained runs. ⚠: wider than ±{MAX_HALF_WIDTH}, too wide to show a trend.", "", bands, "",
        *[f"- {line}" for line in band_notes], *([""] if band_notes else []),
        f"## Distractor slopes (exact against k, least squares per seed){suffix}", "", slopes, "",
        f"## Attention on the needle (MMNeedle haystacks, the answer rows){suffix}", "", attention_table(settings), "",
    ]
    if any(curve_points(j) for jobs in settings.values() for j in jobs):
        text += [f"## Learning curve{suffix}", "", curve_table(settings), ""]
    if lambda_rows or sweep != STUDY or (arm is not None and arm.name == "scratch"):
        text += [f"## Lambda at the end of pretraining (base.json){suffix}", "", lambdas, ""]
        text += [f"- {line}" for line in lambda_summary] + ([""] if lambda_summary else [])
    text += [f"## Lambda after the fine-tune{suffix}", "", lambda_table(settings), ""]
    text += [f"- {line}" for line in lambda_moved(settings, prefix)] + [""]
    text += [f"![{name}]({name})" for name in figures] + ["", f"## Findings{suffix}", ""]
    text += ["Each setting against the vanilla of its arm, over every figure above (a figure counts as different "
             "when the 95% CI of the paired difference excludes 0):", ""]
    text += [f"- {line}" for line in findings(rows)] or ["- no comparison with vanilla (no vanilla runs)"]
    text += [f"- {line}" for line in slope_findings(slope_rows)] + [""]
    return text, rows, figures


def write_sweep(report: Report, sweep: Sweep) -> dict[str, Path]:
    """The sweep's markdown, CSV and figures in ``report.out``; returns them by file name. A study's settings are
    reported arm by arm (:data:`.sweeps.ARMS`), each against its own arm's vanilla."""
    settings = settings_of(report.jobs, sweep)
    arms: dict[Optional[Arm], dict[str, list[Job]]] = dict(by_arm(settings)) if sweep == STUDY else {None: settings}
    seeds = sorted({str(j.seed) for jobs in settings.values() for j in jobs})
    seconds = sum(float(j.metrics.get("total_seconds") or 0) for jobs in settings.values() for j in jobs)
    text = [
        sweep.title,
        "",
        f"{sum(len(j) for j in settings.values())} runs from `{report.source}`: {len(settings)} settings x seeds "
        f"{', '.join(seeds)}; {sweep.runs} ({seconds / 60:.0f} min of jobs in all). Intervals: Student t over "
        "seeds; differences: paired bootstrap over seeds and items "
        f"({REPLICATES:,} replicates), two-sided p. Replies out of format: the share of a location evaluation's "
        "replies that named no cell at all (counted wrong); the rest of the misses named a wrong cell.",
        "",
    ]
    rows: list[dict] = []
    figures: dict[str, Path] = {}
    for arm, arm_settings in arms.items():
        block, arm_rows, arm_figures = arm_block(arm_settings, sweep, report.out, arm, titled=len(arms) > 1)
        text += block
        rows += arm_rows
        figures.update(arm_figures)
    written = {sweep.csv: report.out / sweep.csv}
    write_csv(written[sweep.csv], rows, CSV_FIELDS)
    paper = arms.get(ARMS[0]) if sweep == STUDY else None
    if paper:
        text += ["## The paper, side by side", "", paper_side_by_side(paper), ""]
    written[sweep.markdown] = report.out / sweep.markdown
    written[sweep.markdown].write_text("\n".join(text).rstrip("\n") + "\n")
    written.update(figures)
    return written


SECTION = Section("results", has_results, lambda report: write_sweep(report, STUDY))
