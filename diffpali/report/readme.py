"""The study's findings as a section of a document (the README): written by

    python -m diffpali.report multirun/study/default --readme README.md

between two marker lines, with the study's figures copied beside the document (``docs/study/``), so the
numbers a reader sees come from a run and its command, never from a hand.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

from .format import md_table
from .runs import Job
from .stats import Estimate
from .sweep_tables import final_lambdas, findings, read_study_csv
from .sweeps import STUDY, settings_of

START = "<!-- study findings: written by `python -m diffpali.report <study dir> --readme README.md`; do not edit -->"
END = "<!-- end of study findings -->"
#: (evaluation, metric, column): the summary's columns; results.md has every figure
SUMMARY: tuple[tuple[str, str, str], ...] = (
    ("vqa", "test/vqa_accuracy_official", "VQA (official)"),
    ("mmneedle_paper", "mmneedle/exact", "MMNeedle 2x2 exact"),
    ("mmneedle_official", "mmneedle/exact", "MMNeedle official N=2 exact"),
    ("pope", "pope/adversarial/accuracy", "POPE adversarial acc."),
    ("distractors", "distractors/N2/M1/hard/k3/exact", "target among 3 hard distractors (2x2)"),
    ("distractors", "distractors/N3/M1/hard/k7/exact", "among 7 hard (3x3)"),
)
#: a lambda that ends within this of zero everywhere left the layer what it was at init
INERT_LAMBDA = 0.02
FIGURES = ("distractors_exact.png", "distractors_attention.png", "lambda_trajectories.png")


def _summary_cell(row: dict[str, Any]) -> str:
    estimate = Estimate(row["mean"], row["ci_low"], row["ci_high"], row["n"])
    mark = "" if row["diff"] is None else " ▼" if row["diff_high"] < 0 else " ▲" if row["diff_low"] > 0 else ""
    invalid = row.get("invalid")
    out_of_format = f" ({invalid:.2f} out of format)" if invalid is not None and invalid >= 0.005 else ""
    return estimate.format().replace(f" (n={row['n']})", "") + mark + out_of_format


def summary_table(rows: list[dict[str, Any]]) -> str:
    """The SUMMARY columns of the study.csv rows, one line per setting (in the rows' order, vanilla first)."""
    by_figure = {(r["setting"], r["evaluation"], r["key"]): r for r in rows}
    columns = [c for c in SUMMARY if any((r["evaluation"], r["key"]) == c[:2] for r in rows)]
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    lines = [[name, *(_summary_cell(by_figure[(name, *c[:2])]) if (name, *c[:2]) in by_figure else "—"
                      for c in columns)] for name in settings]
    return md_table(["setting", *(c[2] for c in columns)], lines)


def scope_notes(settings: dict[str, list[Job]]) -> list[str]:
    """What the figures cannot show, read off the runs: the training they had, and retrofits left inert."""
    jobs = [j for group in settings.values() for j in group]
    steps = sorted({int(j.metrics["train_steps"]) for j in jobs if j.metrics.get("train_steps") is not None})
    data = sorted({str(j.get("data.name")) for j in jobs})
    model = sorted({str(j.get("model.name")) for j in jobs})
    notes = [
        f"Each run is {'/'.join(map(str, steps)) or '?'} LoRA steps on {', '.join(data)} questions from the "
        f"{', '.join(model)} base. Location, existence and the distractor scenes are not in the fine-tune: these "
        "figures measure what each retrofit keeps of the base's abilities while it adapts to its changed attention, "
        "not what differential attention could learn with location data, nor anything at PaliGemma's scale.",
    ]
    for name, group in settings.items():
        finals = final_lambdas(group)
        if not finals:
            continue
        largest = max(abs(v) for values in finals.values() for v in values)
        if largest < INERT_LAMBDA:
            notes.append(f"{name}: lambda ended within {largest:.3f} of 0 in every layer and run, so the layer is "
                         "still the pretrained attention; its parity with vanilla says nothing about differential "
                         "attention.")
    return notes


def findings_block(settings: dict[str, list[Job]], rows: list[dict[str, Any]], figures: dict[str, str],
                   source: str) -> str:
    """The section's markdown: the command, a summary table, the findings, the scope, the figures."""
    runs = sum(len(j) for j in settings.values())
    seeds = sorted({str(j.seed) for group in settings.values() for j in group}, key=lambda s: (len(s), s))
    minutes = sum(float(j.metrics.get("total_seconds") or 0) for group in settings.values() for j in group) / 60
    parts = [
        START,
        f"{runs} runs ({len(settings)} settings x seeds {', '.join(seeds)}; {minutes:.0f} min of jobs on the machine "
        f"that ran them), from `python train.py -m experiment=study` and `python -m diffpali.report {source}`. "
        "Each cell: mean ± 95% CI over seeds; ▼/▲: below/above vanilla by a paired bootstrap over the same seeds and "
        "items (the 95% CI of the difference excludes 0); (x out of format): the share of that evaluation's replies "
        "that named no cell at all, counted wrong. Every figure, its n, the differences and their p-values: "
        "the study's `results.md`.",
        "",
        summary_table(rows),
        "",
        "What they show:",
        "",
        *(f"- {line}" for line in findings(rows)),
        "",
        "What they do not show:",
        "",
        *(f"- {line}" for line in scope_notes(settings)),
        "",
        *(f"![{Path(rel).stem}]({rel})" for rel in figures.values()),
        END,
    ]
    return "\n".join(parts)


def copy_figures(written: dict[str, Path], readme: Path, figure_dir: Path) -> dict[str, str]:
    """The study's figures copied to ``figure_dir``; returns their paths relative to the README."""
    figure_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in FIGURES:
        if name in written:
            target = figure_dir / name
            shutil.copyfile(written[name], target)
            out[name] = target.resolve().relative_to(readme.resolve().parent).as_posix()
    return out


def replace_section(readme: Path, block: str) -> None:
    """Put ``block`` between the marker lines of ``readme`` (a ValueError naming the file when they are missing)."""
    text = readme.read_text()
    if START not in text or END not in text or text.index(END) < text.index(START):
        raise ValueError(f"{readme}: no study-findings markers; put these two lines where the section belongs:\n"
                         f"{START}\n{END}")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + block + tail)


def update_readme(jobs: list[Job], written: dict[str, Path], readme: Path, figure_dir: Optional[Path],
                  source: str) -> str:
    """The findings section of ``readme`` rewritten from what the study's section just wrote (``study.csv``, its
    figures, copied to ``figure_dir``, default ``docs/study`` beside the README) and from the study's runs (their
    training and lambdas). Returns what was written, for the console."""
    settings = settings_of(jobs, STUDY)
    if not settings or "study.csv" not in written:
        raise ValueError(f"{source}: no completed study runs (python train.py -m experiment=study)")
    rows = read_study_csv(written["study.csv"])
    figure_dir = figure_dir or readme.parent / "docs" / "study"
    figures = copy_figures(written, readme, figure_dir)
    replace_section(readme, findings_block(settings, rows, figures, source))
    return f"{readme} (study findings) and {len(figures)} figures in {figure_dir}"
