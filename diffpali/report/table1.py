"""Table 1 of the paper: the VQA score of each setting (mean ± sample std over seeds, with n) beside the
paper's percentages, the rows nobody ran, how each run differs from its paper row, and the jobs with no score.

Jobs are grouped by Table 1 row and by their overrides other than ``seed`` (and the row selector).
Which model and dataset a number comes from is in the table: the paper's column is VQAv2 on
PaliGemma 3B; a tiny-model easy-vqa number is a plumbing check, not a reproduction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from .format import diff_attn_label, md_table, num, pct, sci, write_csv
from .runs import METRIC, Group, Job, group_jobs
from .section import Report, Section
from .stats import mean_std


@dataclass(frozen=True)
class PaperRow:
    row: int
    attn: str  #: our attn.variant
    diff_attn: str  #: as the paper's table says it
    ffn: str
    lr: float
    rank: int
    alpha: int
    weight_decay: float
    vqav2: float  #: the paper's VQAv2 score, percent


#: The paper's Table 1 (VQAv2, PaliGemma 3B, LoRA, Adam, batch size 4, 40% of VQAv2 train).
PAPER_TABLE1 = {
    1: PaperRow(1, "vanilla", "no", "mlp", 4e-4, 32, 64, 1e-9, 53.21),
    2: PaperRow(2, "diff_dup", "yes (dup)", "swiglu", 4e-4, 32, 64, 1e-9, 51.91),
    3: PaperRow(3, "vanilla", "no", "mlp", 2e-5, 16, 32, 1e-8, 35.72),
    4: PaperRow(4, "diff_dup", "yes (dup)", "mlp", 2e-5, 32, 64, 1e-8, 33.91),
    5: PaperRow(5, "diff_split", "yes (original)", "swiglu", 2e-5, 32, 64, 1e-8, 41.32),
}

SCORING_NOTE = (
    "Score: `test/vqa_accuracy_official`, the official VQAv2 accuracy (GT-Vision-Lab vqaEval.py: answers "
    "normalised, accuracy = mean over the 10 leave-one-out subsets of min(1, matches/3)) on each run's test "
    "split, stored as a fraction and shown here in percent: mean ± sample standard deviation over the runs "
    "of a row (n). Paper: its Table 1 VQAv2 score, in percent (PaliGemma 3B fine-tuned on 40% of VQAv2 train); "
    "on another model or dataset it is a reference, not a target."
)


def _differences(job: Optional[Job], paper: Optional[PaperRow]) -> str:
    """Where a run's hyper-parameters differ from the paper's row (none for an untouched row)."""
    if job is None or paper is None or not job.config:
        return ""
    checks = [
        ("attn", job.get("attn.variant"), paper.attn),
        ("ffn", job.get("ffn.variant"), paper.ffn),
        ("lr", job.get("optim.lr"), paper.lr),
        ("lora.rank", job.get("lora.rank"), paper.rank),
        ("lora.alpha", job.get("lora.alpha"), paper.alpha),
        ("wd", job.get("optim.weight_decay"), paper.weight_decay),
        ("optim", job.get("optim.name"), "adam"),
        ("batch", job.get("data.batch_size"), 4),
    ]
    out = []
    for name, ours, theirs in checks:
        same = (ours == theirs) if isinstance(theirs, str) else (
            ours is not None and math.isclose(float(ours), float(theirs), rel_tol=1e-9))
        if not same:
            shown = [sci(value) if isinstance(value, float) else value for value in (ours, theirs)]
            out.append(f"{name} {shown[0]} (paper {shown[1]})")
    return "; ".join(out)


def table1_rows(groups: list[Group]) -> list[dict[str, Any]]:
    """One dict per table line: every group, plus the paper's rows no job ran (when any job is a Table 1 row)."""
    rows = []
    seen_rows = {g.table_row for g in groups if g.table_row is not None}
    missing = sorted(set(PAPER_TABLE1) - seen_rows) if seen_rows else []
    for group in groups:
        if group.table_row is None and not group.scores and group.count("completed") == len(group.jobs):
            continue  # no Table 1 score by design (a study job scores VQA among its evals): other sections show it
        job = group.first
        paper = PAPER_TABLE1.get(group.table_row) if group.table_row is not None else None
        mean, std, n = mean_std(group.scores)
        rows.append({
            "row": group.table_row if group.table_row is not None else "",
            "diff_attn": diff_attn_label(job),
            "ffn": (job.get("ffn.variant") if job else None) or "—",
            "lr": sci(job.get("optim.lr")) if job else "—",
            "lora": (f"{job.get('lora.rank')}/{num(job.get('lora.alpha'))}"
                     if job and job.get("lora.rank") is not None else "—"),
            "wd": sci(job.get("optim.weight_decay")) if job else "—",
            "optimizer": job.get("optim.name", "—") if job else "—",
            "batch_size": job.get("data.batch_size", "—") if job else "—",
            "model_data": f"{job.get('model.name', '?')} / {job.get('data.name', '?')}" if job and job.config else "—",
            "setting": group.setting,
            "n": n,
            "mean_pct": None if mean is None else round(100 * mean, 4),
            "std_pct": None if std is None else round(100 * std, 4),
            "ours": pct(mean, std),
            "scores_pct": ";".join(f"{100 * s:.2f}" for s in group.scores),
            "seeds": ";".join(str(s) for s in group.seeds),
            "paper_pct": paper.vqav2 if paper else None,
            "failed": group.count("failed"),
            "incomplete": group.count("incomplete"),
            "unscored": group.unscored,
            "differs_from_paper": _differences(job, paper),
        })
    for number in missing:
        paper = PAPER_TABLE1[number]
        rows.append({
            "row": number, "diff_attn": paper.diff_attn, "ffn": paper.ffn, "lr": sci(paper.lr),
            "lora": f"{paper.rank}/{paper.alpha}", "wd": sci(paper.weight_decay), "optimizer": "adam",
            "batch_size": 4, "model_data": "—", "setting": "", "n": 0, "mean_pct": None, "std_pct": None,
            "ours": "not run", "scores_pct": "", "seeds": "", "paper_pct": paper.vqav2, "failed": 0,
            "incomplete": 0, "unscored": 0, "differs_from_paper": "",
        })
    return sorted(rows, key=lambda r: (r["row"] == "", r["row"] if r["row"] != "" else 0, r["setting"]))


def _status_line(jobs: list[Job]) -> str:
    counts = {s: sum(j.status == s for j in jobs) for s in ("completed", "failed", "incomplete")}
    return (f"{len(jobs)} jobs: {counts['completed']} completed, {counts['failed']} failed, "
            f"{counts['incomplete']} incomplete")


def unfinished_section(jobs: list[Job], scored: Callable[[Job], bool]) -> str:
    """Every job that gave no results to any section (``scored``), with why: failed (its error),
    incomplete, or completed without the metric."""
    lines = []
    for job in jobs:
        if job.status == "completed" and scored(job):
            continue
        why = job.error if job.status != "completed" else f"completed without `{METRIC}` (test_after_fit=false?)"
        row = f"row {job.table_row}, " if job.table_row is not None else ""
        seed = f"seed {job.seed}, " if job.seed is not None else ""
        message = (why or "").splitlines()[0][:300] if why else ""
        overrides = ",".join(job.overrides) or "no overrides"
        overrides = overrides if len(overrides) <= 200 else overrides[:200] + "..."
        lines.append(f"- **{job.status}** `{job.path}` ({row}{seed}{overrides}): {message}")
    if not lines:
        return ""
    return "### Jobs without a score\n\n" + "\n".join(lines)


def table1_markdown(report: Report) -> str:
    jobs, source = report.jobs, report.source
    rows = table1_rows(group_jobs(jobs))
    if not rows:
        return ("## Table 1: VQA score, ours beside the paper's\n\n"
                f"Source: `{source}`; {_status_line(jobs)}; none of them is a Table 1 job or has "
                f"`{METRIC}` (their results are in the other sections).\n")
    show_setting = any(r["setting"] for r in rows)
    header = ["row", "diff attn", "ffn", "lr", "LoRA r/α", "wd", "model / data", "ours (%)", "n", "paper VQAv2 (%)",
              "failed"]
    if show_setting:
        header.append("setting")
    header.append("differs from the paper's row")
    lines = []
    for r in rows:
        failed = str(r["failed"]) if r["failed"] else ""
        if r["incomplete"]:
            failed = f"{failed} (+{r['incomplete']} incomplete)".strip()
        line = [r["row"], r["diff_attn"], r["ffn"], r["lr"], r["lora"], r["wd"], r["model_data"], r["ours"], r["n"],
                "—" if r["paper_pct"] is None else f"{r['paper_pct']:.2f}", failed]
        if show_setting:
            line.append(f"`{r['setting']}`" if r["setting"] else "")
        line.append(r["differs_from_paper"])
        lines.append(line)
    parts = [
        "## Table 1: VQA score, ours beside the paper's",
        "",
        SCORING_NOTE,
        "",
        f"Source: `{source}`; {_status_line(jobs)}."
        + (" The paper's rows: Adam, batch size 4." if any(j.table_row is not None for j in jobs) else ""),
        "",
        md_table(header, lines),
    ]
    unfinished = unfinished_section(jobs, report.scored)
    if unfinished:
        parts += ["", unfinished]
    return "\n".join(parts) + "\n"


TABLE1_CSV_FIELDS = [
    "row", "diff_attn", "ffn", "lr", "lora", "wd", "optimizer", "batch_size", "model_data", "setting", "n",
    "mean_pct", "std_pct", "scores_pct", "seeds", "paper_pct", "failed", "incomplete", "unscored", "differs_from_paper",
]


def write(report: Report) -> dict[str, Path]:
    written = {"table1.md": report.out / "table1.md", "table1.csv": report.out / "table1.csv"}
    written["table1.md"].write_text(table1_markdown(report))
    write_csv(written["table1.csv"], table1_rows(group_jobs(report.jobs)), TABLE1_CSV_FIELDS)
    return written


#: Written even when no job has a score: it lists every job that gave none, and why.
SECTION = Section("table1", has_results=lambda job: job.score is not None, write=write, always=True)
