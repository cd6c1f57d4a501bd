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
from .sweep_tables import final_lambdas, findings, lambda_moved, read_study_csv
from .sweeps import ARMS, STUDY, Arm, arm_of, by_arm, settings_of

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
FIGURES = ("distractors_exact.png", "distractors_attention.png", "lambda_trajectories.png",
           "fair_distractors_exact.png", "scratch_distractors_exact.png")


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
    """What the figures cannot show, read off the runs: the training each arm had, and retrofits left inert."""
    notes = []
    for arm, group in by_arm(settings).items():
        jobs = [j for runs in group.values() for j in runs]
        steps = sorted({int(j.metrics["train_steps"]) for j in jobs if j.metrics.get("train_steps") is not None})
        data = sorted({str(j.get("data.name")) + (" with rehearsal" if j.get("data.rehearsal") else "")
                       for j in jobs})
        what = (f"{'/'.join(map(str, steps)) or '?'} LoRA steps on {', '.join(data)} questions")
        if arm.name == "paper":
            notes.append(f"Paper arm: each run is {what} from the tiny base. Location, existence and the distractor "
                         "scenes are not in the fine-tune: these figures measure what each retrofit keeps of the "
                         "base's abilities while it adapts to its changed attention, not what differential attention "
                         "could learn with location data.")
        elif arm.name == "fair":
            notes.append(f"Fair arm: each run is {what}; the rehearsed tasks include location, so its figures "
                         "are not transfer in the paper arm's sense. Its budget is short of the several thousand "
                         "steps of published retrofits.")
        else:
            notes.append(f"Scratch arm: each base is pretrained at the arm's reduced recipe, then {what}; the "
                         "model is a 1.1M-parameter stand-in.")
    notes.append("Nothing here is at PaliGemma's scale: every run fine-tunes the embedded tiny base.")
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


#: each paper-arm retrofit and the fair arm's setting of the same variant (the forgetting question pairs them)
FAIR_COUNTERPART = {"diff_split": "fair_diff_split_transfer", "diff_dup_separate": "fair_diff_dup",
                    "diff_v2_plain": "fair_diff_v2"}
QUESTIONS = {
    "scratch": "Does pretraining with differential attention help a VLM under noise? (the scratch arm, each against "
               "the base pretrained with vanilla attention from the same seed)",
    "fair": "Does a fair retrofit keep the base's skills and gain anything? (the fair arm, each against vanilla with "
            "the same rehearsal, steps and LoRA)",
}


def arm_rows(rows: list[dict[str, Any]], arm: Arm) -> list[dict[str, Any]]:
    return [r for r in rows if arm_of(r["setting"]) == arm]


def forgetting_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Per variant: on the figures where the paper-arm retrofit is significantly below its vanilla, how often the
    fair retrofit of the same variant is too (against its own vanilla), and the share of the gap it closed (the
    median over those figures, and its range); the largest paper-style gap beside the fair one."""
    by_key = {(r["setting"], r["evaluation"], r["key"]): r for r in rows if r.get("diff") is not None}
    lines = []
    for paper, fair in FAIR_COUNTERPART.items():
        pairs = [(row, by_key[(fair, evaluation, key)]) for (setting, evaluation, key), row in by_key.items()
                 if setting == paper and row["diff_high"] < 0 and row["diff"] and (fair, evaluation, key) in by_key]
        if not pairs:
            continue
        closed = sorted(1 - other["diff"] / row["diff"] for row, other in pairs)
        still = sum(other["diff_high"] < 0 for _, other in pairs)
        row, other = min(pairs, key=lambda pair: pair[0]["diff"])
        lines.append(f"{paper} → {fair}: of the {len(pairs)} figures where the paper-style retrofit is below its "
                     f"vanilla, the fair one is below its own on {still}; median share of the gap closed "
                     f"{closed[len(closed) // 2]:.0%} (from {closed[0]:.0%} to {closed[-1]:.0%}); largest: "
                     f"{row['metric']}, {row['diff']:+.3f} [{row['diff_low']:+.3f}, {row['diff_high']:+.3f}] against "
                     f"{other['diff']:+.3f} [{other['diff_low']:+.3f}, {other['diff_high']:+.3f}].")
    return lines


def question_lines(rows: list[dict[str, Any]], settings: dict[str, list[Job]]) -> list[str]:
    """The findings, question by question, for the arms that ran (the paper arm's alone when it is the only one)."""
    arms = by_arm(settings)
    parts: list[str] = []
    paper = ARMS[0]
    if set(arms) == {paper}:
        return [f"- {line}" for line in findings(rows)]
    for name, question in QUESTIONS.items():
        arm = next((a for a in arms if a.name == name), None)
        if arm is not None:
            parts += [f"**{question}**", ""]
            parts += [f"- {line}" for line in findings(arm_rows(rows, arm))]
            parts += [f"- {line}" for line in lambda_moved(arms[arm], arm.prefix)] + [""]
    if paper in arms:
        parts += ["**How much of the paper-style retrofit's loss was forgetting?** (each paper-arm retrofit's gap to "
                  "its vanilla beside the fair retrofit's gap to its own, on the same figure)", ""]
        parts += [f"- {line}" for line in findings(arm_rows(rows, paper))]
        parts += [f"- {line}" for line in forgetting_lines(rows)] or ["- no figure to pair (run both arms)"]
    return parts


def findings_block(settings: dict[str, list[Job]], rows: list[dict[str, Any]], figures: dict[str, str],
                   source: str) -> str:
    """The section's markdown: the command, a summary table and noise-scaling figure per arm, the findings
    question by question, the scope, the other figures."""
    runs = sum(len(j) for j in settings.values())
    seeds = sorted({str(j.seed) for group in settings.values() for j in group}, key=lambda s: (len(s), s))
    minutes = sum(float(j.metrics.get("total_seconds") or 0) for group in settings.values() for j in group) / 60
    arms = by_arm(settings)
    tables: list[str] = []
    for arm in arms:
        if len(arms) > 1:
            tables += [f"**{arm.name.capitalize()} arm: {arm.title}.**", ""]
        tables += [summary_table(arm_rows(rows, arm)), ""]
        exact = figures.get(f"{arm.prefix}distractors_exact.png")
        tables += [f"![{arm.prefix}distractors_exact]({exact})", ""] if exact and len(arms) > 1 else []
    shown = {f"{arm.prefix}distractors_exact.png" for arm in arms} if len(arms) > 1 else set()
    parts = [
        START,
        f"{runs} runs ({len(settings)} settings x seeds {', '.join(seeds)}; {minutes:.0f} min of jobs on the machine "
        f"that ran them), from `python train.py -m experiment=study` and `python -m diffpali.report {source}`. "
        "Each cell: mean ± 95% CI over seeds; ▼/▲: below/above the vanilla of the same arm by a paired bootstrap "
        "over the same seeds and items (the 95% CI of the difference excludes 0); (x out of format): the share of "
        "that evaluation's replies that named no cell at all, counted wrong. Every figure, its n, the differences "
        "and their p-values: the study's `results.md`.",
        "",
        *tables,
        "What they show:",
        "",
        *question_lines(rows, settings),
        "",
        "What they do not show:",
        "",
        *(f"- {line}" for line in scope_notes(settings)),
        "",
        *(f"![{Path(rel).stem}]({rel})" for name, rel in figures.items() if name not in shown),
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
